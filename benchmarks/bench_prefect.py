"""Ratios measured side by side in one run: the Prefect flow against plain `dvc repro` on the default
pipeline (target: overhead <= 5 %), and the annotate fan-out on 2 Dask workers against 1.

    .venv/bin/python benchmarks/bench_prefect.py [--rounds 2] [--dask-rounds 3] [--chunk-size 64]
        [--skip-pipeline]

One snapshot of this working tree (a `git clone` plus uncommitted edits, no DVC outputs) with the training
shortened (SHORT_RUN: minutes of CPU training would swamp the orchestration being measured); each side of
each round runs in its own fresh copy of it, on its own copy of src/ (PYTHONPATH), so both run every stage
with the same code and params whatever is edited here meanwhile. The sides take turns, in alternating order
across rounds, and the median round counts. The flow talks to a real `prefect server` on 127.0.0.1, started
beforehand, as a deployed run would; the server's start and Prefect's import are not the flow's time.
Writes benchmarks/results.json["prefect"].
"""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, suppress
from multiprocessing import Pool
from pathlib import Path

import httpx
import psutil

from record import RESULTS, record

ROOT = Path(__file__).resolve().parents[1]
RESULT = "bench-result:"  # marks the line a child prints for the parent, among Prefect's logs
ENV = dict(os.environ, DO_NOT_TRACK="1", DVC_NO_ANALYTICS="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
           HF_HUB_OFFLINE="1", PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
# The default pipeline with a few training steps and short sampling: every stage still runs and writes
# what it always writes (checkpoint, sample grid, metrics plots, evaluation, report).
SHORT_RUN = {"train.max_steps": 4, "train.sample_every_n_steps": 4, "train.log_every_n_steps": 4,
             "train.checkpoint_every_n_steps": 4, "evaluate.sample_steps": 4}


def workspace(dest: Path, short: bool = True) -> Path:
    """`git clone` of the project, the working tree's edits and new files copied over it, SHORT_RUN applied
    unless `short` is False (params.yaml as it is)."""
    from handloom.orchestrate.overrides import apply_overrides

    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    listing = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listing):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    if short:
        apply_overrides(dest / "params.yaml", SHORT_RUN)
    return dest


def fresh_copy(snapshot: Path, dest: Path) -> Path:
    shutil.copytree(snapshot, dest, symlinks=True)
    return dest


def side_env(repo: Path) -> dict:
    """The copy's own src/ ahead of the venv's editable install: each side runs the code it was copied with."""
    return dict(os.environ, **ENV, PYTHONPATH=str(repo / "src"))


@contextmanager
def prefect_server(home: Path):
    """A server on a free loopback port: yields its API URL and its process (whose CPU the flow's runs use)."""
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
        yield api, psutil.Process(proc.pid)
    finally:
        stop([psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)])


def stop(procs: list[psutil.Process]) -> None:
    for p in procs:
        with suppress(psutil.NoSuchProcess):
            p.terminate()
    for p in psutil.wait_procs(procs, timeout=20)[1]:
        p.kill()


def tree_cpu_s(proc: psutil.Process) -> float:
    """User + system CPU seconds of a process and its live children."""
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        with suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def reaped_cpu_s() -> float:
    """CPU seconds of every descendant reaped so far: a finished run's whole process tree."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def last_result(output: str) -> dict:
    return json.loads([line for line in output.splitlines() if line.startswith(RESULT)][-1][len(RESULT):])


def run_child(kind: str, *args: str) -> None:
    """A run in its own process, timed there: Prefect flushes its logs and events to the server at exit,
    so the process must end while the server is up, and its import is no part of the flow's time."""
    if kind == "flow":
        from handloom.orchestrate.flows import pipeline

        seconds, state = timed(pipeline, repo=args[0], targets=list(args[1:]) or None, return_state=True)
        if not state.is_completed():
            raise SystemExit(f"flow failed: {state.message}")
        result = state.result()
    else:
        from distributed import LocalCluster

        from handloom.annotate.pipeline import annotate_dataset
        from handloom.chunks import CHUNK_ENV, SCHEDULER_ENV
        from handloom.params import load_params

        ingest_dir, n_workers, chunk_size, out = args
        # An empty annotation cache of its own: every run detects every image.
        p = load_params(ROOT / "params.yaml").annotate.model_copy(update={"cache_dir": f"{out}/cache"})

        def fanout() -> dict:
            """The annotate stage on a local Dask cluster, as the flow runs it (cluster start included)."""
            with LocalCluster(n_workers=int(n_workers), threads_per_worker=1, processes=True, host="127.0.0.1",
                              dashboard_address=None) as cluster:
                os.environ.update({SCHEDULER_ENV: cluster.scheduler_address, CHUNK_ENV: chunk_size})
                return annotate_dataset(Path(ingest_dir), Path(out) / "annotations", p)

        seconds, result = timed(fanout)
    print(RESULT, json.dumps({"seconds": seconds, "result": result}), flush=True)


def launch(args: list[str], cwd: Path, log: Path, env: dict | None = None) -> tuple[subprocess.Popen, float]:
    """A process writing to `log`, and when it started."""
    with open(log, "w") as out:
        proc = subprocess.Popen(args, cwd=cwd, env=env or dict(os.environ, **ENV), stdout=out, stderr=subprocess.STDOUT)
    proc.log = log
    return proc, time.perf_counter()


def reap(proc: subprocess.Popen, started: float) -> float:
    """Wall seconds from launch to this process's own exit."""
    if proc.wait():
        raise SystemExit(f"{' '.join(map(str, proc.args))} exited with {proc.returncode}:\n"
                         f"{proc.log.read_text()[-3000:]}")
    return time.perf_counter() - started


def run_dvc_repro(repo: Path, log: Path, *args: str) -> dict:
    """`dvc repro <args>`: wall seconds of the whole process, CPU seconds of its tree."""
    cpu = reaped_cpu_s()
    wall = reap(*launch([sys.executable, "-m", "dvc", "repro", *args], repo, log, side_env(repo)))
    return {"wall": wall, "process": wall, "cpu": reaped_cpu_s() - cpu}


def run_flow(repo: Path, log: Path, server: psutil.Process, *targets: str) -> dict:
    """The flow in a child process: wall seconds of the flow call and of the whole process, CPU seconds of
    its tree and of the server's work for it, and the stages' outcomes."""
    cpu, server_cpu = reaped_cpu_s(), tree_cpu_s(server)
    process = reap(*launch([sys.executable, __file__, "--child", "flow", str(repo), *targets], repo, log,
                           side_env(repo)))
    result = last_result(log.read_text())
    return {"wall": result["seconds"], "process": process, "stages": result["result"],
                "cpu": reaped_cpu_s() - cpu + tree_cpu_s(server) - server_cpu}


def bench_pipeline(tmp: Path, snapshot: Path, server: psutil.Process, rounds: int) -> dict:
    """`dvc repro` in one fresh copy, the flow in another, in turn, the order alternating across rounds."""
    runs = []
    for r in range(rounds):
        repos = {"dvc": fresh_copy(snapshot, tmp / f"dvc-{r}"), "flow": fresh_copy(snapshot, tmp / f"flow-{r}")}
        timing, load = {}, {}
        for side in ("dvc", "flow") if r % 2 == 0 else ("flow", "dvc"):
            load[side] = round(os.getloadavg()[0], 2)
            log = tmp / f"{side}-{r}.log"
            timing[side] = (run_dvc_repro(repos["dvc"], log) if side == "dvc" else
                            run_flow(repos["flow"], log, server))
        flow, dvc = timing["flow"], timing["dvc"]
        runs.append({"ratio": flow["wall"] / dvc["wall"], "cpu_ratio": flow["cpu"] / dvc["cpu"], "load": load,
                         "dvc_s": dvc["wall"], "flow_s": flow["wall"], "flow_process_s": flow["process"],
                         "dvc_cpu_s": dvc["cpu"], "flow_cpu_s": flow["cpu"],
                         "flow_stages": {s: [o["status"], o["seconds"]] for s, o in flow["stages"].items()},
                         "identical": same_outputs(repos["dvc"], repos["flow"])})
        print(f"round {r}: dvc repro {dvc['wall']:.1f} s (load {load['dvc']}), flow run {flow['wall']:.1f} s "
              f"(whole process {flow['process']:.1f} s, load {load['flow']}): flow / dvc repro = "
              f"{runs[-1]['ratio']:.3f}; CPU {flow['cpu']:.0f} s / {dvc['cpu']:.0f} s = {runs[-1]['cpu_ratio']:.3f}",
              flush=True)
        stages = flow["stages"].items()
        print("  flow stages: " + ", ".join(f"{s} {o['status']} {o['seconds']:.1f} s" for s, o in stages))
        print(f"  identical in both copies: {', '.join(runs[-1]['identical']) or 'none'}", flush=True)
    return {"runs": runs, "noop": bench_noop(tmp, repos["dvc"], repos["flow"], server)}


def same_outputs(a: Path, b: Path) -> list[str]:
    return [p for p in ("data/annotations/synthetic/annotations.parquet", "reports/data/synthetic.json",
                        "reports/metrics.json", "dvc.lock")
            if (a / p).exists() and (b / p).exists() and filecmp.cmp(a / p, b / p, shallow=False)]


def bench_noop(tmp: Path, plain: Path, flow: Path, server: psutil.Process) -> dict:
    """Both copies up to date: what is left is the orchestration itself, with no stage's work on it."""
    wall = {"dvc": run_dvc_repro(plain, tmp / "noop-dvc.log")["wall"],
            "flow": run_flow(flow, tmp / "noop-flow.log", server)["wall"]}
    print(f"no-op (every stage up to date): dvc repro {wall['dvc']:.1f} s, flow run {wall['flow']:.1f} s", flush=True)
    return wall


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
    return round(rates[2] / rates[1], 3)


def bench_fanout(tmp: Path, ingest_dir: Path, chunk_size: int, rounds: int) -> dict:
    """annotate@synthetic's fan-out on a local Dask cluster of 1 and of 2 workers, same chunks, in turn."""
    capacity = [parallel_capacity()]
    print(f"parallel capacity before: 2 processes do {capacity[0]:.2f}x the work of 1", flush=True)
    times, images = {1: [], 2: []}, 0
    for r in range(rounds):
        for n in (1, 2) if r % 2 == 0 else (2, 1):
            load = os.getloadavg()[0]
            log = tmp / f"fanout-{n}-{r}.log"
            reap(*launch([sys.executable, __file__, "--child", "fanout", str(ingest_dir), str(n), str(chunk_size),
                          str(tmp / f"fanout-{n}-{r}")], ROOT, log))
            run = last_result(log.read_text())
            times[n].append(round(run["seconds"], 2))
            images = run["result"]["images"]
            print(f"annotate fan-out, {n} Dask worker(s), round {r}: {run['seconds']:.1f} s for {images} images "
                  f"(load {load:.1f} -> {os.getloadavg()[0]:.1f})", flush=True)
    capacity.append(parallel_capacity())
    median = {n: statistics.median(t) for n, t in times.items()}
    speedup = median[1] / median[2]
    print(f"annotate fan-out speed-up, 2 workers over 1: {speedup:.2f}x ({median[1]:.1f} s -> {median[2]:.1f} s, "
          f"median of {rounds}); parallel capacity after: {capacity[1]:.2f}x", flush=True)
    return {"dask_speedup_2_vs_1": round(speedup, 3), "dask_1_worker_s": times[1], "dask_2_workers_s": times[2],
                "dask_images": images, "dask_chunk_size": chunk_size, "dask_rounds": rounds,
                "parallel_capacity_2_vs_1": capacity}


def pipeline_figures(bench: dict) -> dict:
    runs, noop = bench["runs"], bench["noop"]
    median = statistics.median(r["ratio"] for r in runs)
    return {"overhead": round(median - 1, 4), "overhead_per_round": [round(r["ratio"] - 1, 4) for r in runs],
            "cpu_overhead": round(statistics.median(r["cpu_ratio"] for r in runs) - 1, 4),
            "noop_dvc_s": round(noop["dvc"], 2), "noop_flow_s": round(noop["flow"], 2),
            "noop_overhead": round((noop["flow"] - noop["dvc"]) / statistics.median(r["dvc_s"] for r in runs), 4),
            "rounds": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()} for r in runs]}


SETUP = ("overhead: Prefect flow run (`pipeline()` against a real local server; fan-out on, so annotate runs on a "
         "local Dask cluster of one worker per core) / `dvc repro`, each on the whole default pipeline in its own "
         "fresh copy of the repo (empty DVC and annotation caches), in turn with the order alternating, median of "
         "rounds; the default params except SHORT_RUN ({short}) so that CPU training does not swamp the "
         "orchestration; flow time = the flow call (the worker's interpreter start and Prefect import excluded; "
         "the whole process is in rounds[].flow_process_s), dvc time = the whole `dvc repro` process. "
         "cpu_overhead: the same with CPU seconds of each side's process tree (+ the server's for the flow). "
         "noop_*: both again with every stage up to date; noop_overhead: that difference over the median full `dvc "
         "repro`, the flow's fixed cost without the load's noise on it. dask_speedup_2_vs_1: annotate@synthetic's "
         "fan-out "
         "(the annotate stage with HANDLOOM_DASK_SCHEDULER, cluster start included, empty annotation cache each run) "
         "on a local Dask cluster of 1 "
         "vs 2 single-threaded workers, chunks of dask_chunk_size images, in turn, median of dask_rounds; "
         "parallel_capacity_2_vs_1: pure-Python work 2 processes do over 1, before and after (2.0 = two idle cores)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip-pipeline", action="store_true", help="only the Dask fan-out")
    ap.add_argument("--chunk-size", type=int, default=64, help="the flow's default annotate_chunk_size")
    ap.add_argument("--dask-rounds", type=int, default=3, help="1 and 2 workers in turn; the median of each counts")
    ap.add_argument("--default-params", action="store_true",
                    help="the pipeline with params.yaml as it is (full training), no fan-out part; "
                         "recorded under prefect_default")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return run_child(*args.child)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `kill` still stops the server and cleans up
    # What a run skips keeps the figures a previous run recorded.
    key = "prefect_default" if args.default_params else "prefect"
    result = json.loads(RESULTS.read_text()).get(key, {}) if RESULTS.exists() else {}
    setup = SETUP.format(short=json.dumps(SHORT_RUN))
    if args.default_params:
        setup = "flow vs dvc repro on the default pipeline with params.yaml as it is (no SHORT_RUN), in turn"
    result.update(setup=setup, cpus=os.cpu_count(),
                  load_average_at_start=round(os.getloadavg()[0], 2),
                  command=" ".join(["python benchmarks/bench_prefect.py", *sys.argv[1:]]))
    with tempfile.TemporaryDirectory(prefix="bench-prefect-") as tmp:
        tmp = Path(tmp)
        (tmp / "prefect").mkdir()
        try:
            with prefect_server(tmp / "prefect") as (api, server):
                os.environ.update(PREFECT_API_URL=api, PREFECT_HOME=str(tmp / "prefect"), **{
                    k: v for k, v in ENV.items() if k in ("DO_NOT_TRACK", "DVC_NO_ANALYTICS", "HF_HUB_OFFLINE")})
                snapshot = workspace(tmp / "snapshot", short=not args.default_params)
                if not args.default_params:
                    # The fan-out first (its figures are recorded even if the long part fails) on its own ingest.
                    result.update(bench_fanout(tmp, ingest_only(fresh_copy(snapshot, tmp / "ingest")),
                                               args.chunk_size, args.dask_rounds))
                    record(key, dict(sorted(result.items())))
                if not args.skip_pipeline:
                    result.update(pipeline_figures(bench_pipeline(tmp, snapshot, server, args.rounds)))
                    print(f"flow / dvc repro: overhead {100 * result['overhead']:+.1f} % (median of {args.rounds}), "
                          f"CPU {100 * result['cpu_overhead']:+.1f} %", flush=True)
        finally:  # a failed run may leave a child running: stop all this started
            stop(psutil.Process().children(recursive=True))
    result["load_average_at_end"] = round(os.getloadavg()[0], 2)
    record(key, dict(sorted(result.items())))
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, (list, dict, str))}, indent=1))


def ingest_only(repo: Path) -> Path:
    subprocess.run([sys.executable, "-m", "dvc", "repro", "ingest@synthetic"], cwd=repo, env=side_env(repo),
                   check=True, stdout=subprocess.DEVNULL)
    return repo / "data/ingest/synthetic"


if __name__ == "__main__":
    main()
