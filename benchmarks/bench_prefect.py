"""Ratios measured side by side in one run: the Prefect flow against plain `dvc repro` on the default
pipeline (target: overhead <= 5 %), and the annotate fan-out on 2 Dask workers against 1.

    .venv/bin/python benchmarks/bench_prefect.py [--rounds 1] [--dask-rounds 3] [--chunk-size 64]
        [--in-turn] [--skip-pipeline [--ingest-dir data/ingest/synthetic]]

Each side gets a fresh clone of this working tree (uncommitted edits included, no DVC outputs), so both
run every stage. The flow talks to a real `prefect server` on 127.0.0.1, started here beforehand, as a
deployed run would; the server's start and Prefect's import are not the flow's time.
"""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from multiprocessing import Pool
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULT = "bench-result:"  # marks the line a child prints for the parent, among Prefect's logs
ENV = dict(os.environ, DO_NOT_TRACK="1", DVC_NO_ANALYTICS="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
           HF_HUB_OFFLINE="1", PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))


def workspace(dest: Path) -> Path:
    """`git clone` of the project, then the working tree's edits and new files copied over it."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    listing = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listing):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


@contextmanager
def prefect_server(home: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = f"http://127.0.0.1:{port}/api"
    env = dict(ENV, PREFECT_HOME=str(home), PREFECT_API_URL=api, PREFECT_SERVER_DATABASE_TIMEOUT="30")
    proc, _ = launch([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                     home.parent, home.parent / "prefect-server.log", env)
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{api}/health").json() is True:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        yield api
    finally:
        stop([psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)])


def stop(procs: list[psutil.Process]) -> None:
    for p in procs:
        with suppress(psutil.NoSuchProcess):
            p.terminate()
    for p in psutil.wait_procs(procs, timeout=20)[1]:
        p.kill()


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def child(*args) -> dict:
    """A run in its own process, timed there: Prefect flushes its logs and events to the server at exit,
    so the process must end while the server is up, and its import is no part of the flow's time."""
    out = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], env=dict(os.environ),
                         capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{args[0]} failed:\n{out.stderr[-3000:]}")
    return last_result(out.stdout)


def last_result(output: str) -> dict:
    return json.loads([line for line in output.splitlines() if line.startswith(RESULT)][-1][len(RESULT):])


def run_child(kind: str, *args: str) -> None:
    if kind == "flow":
        from handloom.orchestrate.flows import pipeline

        seconds, state = timed(pipeline, repo=args[0], targets=list(args[1:]) or None, return_state=True)
        if not state.is_completed():
            raise SystemExit(f"flow failed: {state.message}")
        result = state.result()
    else:
        from handloom.orchestrate.fanout import annotate_fanout, dask_runner
        from handloom.params import load_params

        ingest_dir, n_workers, chunk_size, out = args
        seconds, result = timed(annotate_fanout.with_options(task_runner=dask_runner(n_workers=int(n_workers))),
                                ingest_dir=ingest_dir, out_dir=f"{out}/annotations", stats_path=f"{out}/stats.json",
                                parts_dir=f"{out}/parts", p=load_params(ROOT / "params.yaml").annotate,
                                chunk_size=int(chunk_size))
    print(RESULT, json.dumps(dict(seconds=seconds, result=result)), flush=True)


def launch(args: list[str], cwd: Path, log: Path, env: dict | None = None) -> tuple[subprocess.Popen, float]:
    """A process writing to `log`, and when it started."""
    with open(log, "w") as out:
        proc = subprocess.Popen(args, cwd=cwd, env=env or dict(os.environ, **ENV), stdout=out, stderr=subprocess.STDOUT)
    return proc, time.perf_counter()


def reap(proc: subprocess.Popen, started: float) -> float:
    """Wall seconds from launch to this process's own exit."""
    if proc.wait():
        raise SystemExit(f"{' '.join(map(str, proc.args))} exited with {proc.returncode}")
    return time.perf_counter() - started


def bench_pipeline(tmp: Path, rounds: int, paired: bool) -> Path:
    """`dvc repro` in one fresh clone, the flow in another. Paired (the default) starts both at once, so
    the load other users put on a shared machine falls on both alike; otherwise they take turns, in
    alternating order across rounds."""
    ratios = []
    for r in range(rounds):
        plain, flow = workspace(tmp / f"dvc-{r}"), workspace(tmp / f"flow-{r}")
        runs = {"dvc repro": ([sys.executable, "-m", "dvc", "repro"], plain),
                "flow": ([sys.executable, __file__, "--child", "flow", str(flow)], flow)}
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        load, wall = os.getloadavg()[0], {}
        logs = {name: tmp / f"{name.replace(' ', '-')}-{r}.log" for name in order}
        if paired:  # one waiting thread each, so each wall time ends when its own process does
            procs = {name: launch(*runs[name], logs[name]) for name in order}
            with ThreadPoolExecutor(len(procs)) as pool:
                done = {name: pool.submit(reap, *procs[name]) for name in order}
            wall = {name: future.result() for name, future in done.items()}
        else:
            wall = {name: reap(*launch(*runs[name], logs[name])) for name in order}
        result = last_result((tmp / f"flow-{r}.log").read_text())
        stages = result["result"].items()
        print("  flow stages: " + ", ".join(f"{s} {o['status']} {o['seconds']:.1f} s" for s, o in stages))
        for name in order:
            print(f"round {r}: {name:9s} {wall[name]:8.1f} s wall (whole process)")
        print(f"round {r}: flow run  {result['seconds']:8.1f} s wall (the flow call: no interpreter start, no imports)")
        ratios.append(result["seconds"] / wall["dvc repro"])
        print(f"round {r} ({'paired' if paired else 'in turn'}, load {load:.1f} -> {os.getloadavg()[0]:.1f}): "
              f"flow run / dvc repro = {ratios[-1]:.3f} (overhead {100 * (ratios[-1] - 1):+.1f} %); "
              f"whole flow process / dvc repro = {wall['flow'] / wall['dvc repro']:.3f}", flush=True)
        same = [p for p in ("reports/metrics.json", "reports/data/synthetic.json")
                if (plain / p).exists() and filecmp.cmp(plain / p, flow / p, shallow=False)]
        print(f"  identical in both workspaces: {', '.join(same) or 'none'}", flush=True)
    print(f"flow run / dvc repro over {rounds} round(s): {', '.join(f'{x:.3f}' for x in ratios)}", flush=True)
    noop = bench_noop(tmp, plain, flow)
    print(f"orchestration overhead = no-op difference / full dvc repro = {noop:.1f} s / {wall['dvc repro']:.1f} s "
          f"= {100 * noop / wall['dvc repro']:.2f} %", flush=True)
    bench_annotate_stage(tmp, plain, flow)
    return plain / "data/ingest/synthetic"


def in_turn(tmp: Path, label: str, plain_args: list[str], plain: Path, flow_args: list[str], flow: Path) -> dict:
    """`dvc <plain_args>` in `plain` and the flow child in `flow`, one after the other; wall seconds each."""
    wall = {}
    wall["dvc"] = reap(*launch([sys.executable, "-m", "dvc", *plain_args], plain, tmp / f"{label}-dvc.log"))
    reap(*launch([sys.executable, __file__, "--child", "flow", str(flow), *flow_args], flow, tmp / f"{label}-flow.log"))
    wall["flow"] = last_result((tmp / f"{label}-flow.log").read_text())["seconds"]
    return wall


def bench_noop(tmp: Path, plain: Path, flow: Path) -> float:
    """Both workspaces up to date: what is left is the orchestration itself, with no stage's noise on it."""
    wall = in_turn(tmp, "noop", ["repro"], plain, [], flow)
    print(f"no-op (every stage up to date): dvc repro {wall['dvc']:.1f} s, flow run {wall['flow']:.1f} s", flush=True)
    return wall["flow"] - wall["dvc"]


def bench_annotate_stage(tmp: Path, plain: Path, flow: Path) -> None:
    """annotate@synthetic alone: the stage's process pool against the Dask fan-out. A params change only
    this stage reads (`annotate.workers`, which leaves the outputs as they are) makes both really rerun
    it, where deleted outputs would just be checked out of DVC's cache."""
    from handloom.orchestrate.overrides import apply_overrides

    for repo in (plain, flow):
        apply_overrides(repo / "params.yaml", {"annotate.workers": os.cpu_count()})
    wall = in_turn(tmp, "annotate", ["repro", "--single-item", "annotate@synthetic"], plain,
                   ["annotate@synthetic"], flow)
    print(f"annotate@synthetic alone: dvc repro {wall['dvc']:.1f} s (process pool), flow run {wall['flow']:.1f} s "
          f"(Dask fan-out, dvc commit, and a check that ingest is up to date): {wall['flow'] / wall['dvc']:.3f}",
          flush=True)


def _burn(_) -> None:
    x = 0
    for i in range(20_000_000):
        x += i


def parallel_capacity() -> float:
    """How much more pure-Python work 2 processes get done than 1, right now: the ceiling for any
    2-worker speed-up on a machine shared with others (2.0 on two idle cores)."""
    rates = {}
    for n in (1, 2, 1, 2):
        with Pool(n) as pool:
            start = time.perf_counter()
            pool.map(_burn, range(n))
            rates[n] = max(rates.get(n, 0), n / (time.perf_counter() - start))
    return rates[2] / rates[1]


def bench_fanout(tmp: Path, ingest_dir: Path, chunk_size: int, rounds: int) -> None:
    print(f"parallel capacity before: 2 processes do {parallel_capacity():.2f}x the work of 1", flush=True)
    times = {1: [], 2: []}
    for r in range(rounds):
        for n in (1, 2) if r % 2 == 0 else (2, 1):
            load = os.getloadavg()[0]
            run = child("fanout", ingest_dir, n, chunk_size, tmp / f"fanout-{n}-{r}")
            times[n].append(run["seconds"])
            print(f"annotate fan-out, {n} Dask worker(s), round {r}: {run['seconds']:.1f} s for "
                  f"{run['result']['images']} images (load {load:.1f} -> {os.getloadavg()[0]:.1f})", flush=True)
    best = {n: min(t) for n, t in times.items()}
    print(f"annotate fan-out speed-up, 2 workers over 1: {best[1] / best[2]:.2f}x "
          f"({best[1]:.1f} s -> {best[2]:.1f} s, best of {rounds}, {os.cpu_count()} cores)", flush=True)
    print(f"parallel capacity after: 2 processes do {parallel_capacity():.2f}x the work of 1", flush=True)


def ingest_only(tmp: Path) -> Path:
    repo = workspace(tmp / "ingest")
    subprocess.run([sys.executable, "-m", "dvc", "repro", "ingest@synthetic"], cwd=repo, env=ENV, check=True,
                   stdout=subprocess.DEVNULL)
    return repo / "data/ingest/synthetic"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--skip-pipeline", action="store_true", help="only the Dask fan-out (ingests first)")
    ap.add_argument("--in-turn", action="store_true", help="dvc repro and the flow one after the other, not paired")
    ap.add_argument("--ingest-dir", type=Path, help="with --skip-pipeline: an ingested dataset to annotate")
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--dask-rounds", type=int, default=3, help="1 and 2 workers alternately; the best of each counts")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return run_child(*args.child)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `kill` still stops the server and cleans up
    with tempfile.TemporaryDirectory(prefix="bench-prefect-") as tmp:
        tmp = Path(tmp)
        (tmp / "prefect").mkdir()
        try:
            with prefect_server(tmp / "prefect") as api:
                os.environ.update(PREFECT_API_URL=api, PREFECT_HOME=str(tmp / "prefect"), **{
                    k: v for k, v in ENV.items() if k in ("DO_NOT_TRACK", "DVC_NO_ANALYTICS", "HF_HUB_OFFLINE")})
                if args.skip_pipeline:
                    ingested = args.ingest_dir or ingest_only(tmp)
                else:
                    ingested = bench_pipeline(tmp, args.rounds, not args.in_turn)
                bench_fanout(tmp, ingested, args.chunk_size, args.dask_rounds)
        finally:  # a failed run may leave its paired neighbour running: stop all this started
            stop(psutil.Process().children(recursive=True))
    print(json.dumps({"cores": os.cpu_count(), "load_avg": os.getloadavg()}))


if __name__ == "__main__":
    main()
