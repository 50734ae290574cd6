"""Scale benchmark: the ingest, annotate and shard stages on FreiHAND-layout datasets of growing size.

    .venv/bin/python benchmarks/scale.py [--sizes 1000 4000 16000] [--speedup-size 1000] [--work DIR]

Each dataset is built in a temp folder from the eight FreiHAND samples in ../shared/data/hand_samples/freihand
(never copied into the repo): image i is sample i % 8 with ±2 levels of noise seeded by i, re-encoded, so every
crop hashes differently and the annotation cache never turns a copy into a hit; its record is the sample's real
annotation under a new id (its own sequence). Each stage runs as `python stages/<stage>.py` in a project folder
of its own, one process tree as `dvc repro` runs it, with params.yaml's defaults but crops of 256 px (FreiHAND's
own 224 px images, not upscaled 2.3x to 512 px).

Per stage and size: seconds per image (wall), CPU seconds per image (the whole process tree, from
RUSAGE_CHILDREN), and peak RSS (the sum over the stage's process tree, sampled every 50 ms). Then, at
--speedup-size, each stage also with 1 worker (HANDLOOM_WORKERS; annotate.workers) right after its run with 2,
beside the machine's parallel capacity at that moment (a pure-CPU probe: what 2 processes do over 1).
Writes benchmarks/results.json["scale"], benchmarks/scale.png (cost and memory against N), and prints the
10M-image estimate of the README from the measured CPU costs.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from bench_prefect import parallel_capacity
from record import record

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "data" / "hand_samples" / "freihand"
STAGES = ("ingest", "annotate", "shard")
CROP = 256
CORPUS = 10_000_000  # FoundHand's training corpus, in images


def make_dataset(n: int, out: Path) -> Path:
    """A FreiHAND folder (mmpose layout) of n distinct images: annotations/freihand_test.json, training/rgb/."""
    import cv2

    base = json.loads((SAMPLES / "test_freihand.json").read_text())
    annotations = {a["image_id"]: a for a in base["annotations"]}
    samples = [(image, cv2.imread(str(SAMPLES / image["file_name"])), annotations[image["id"]])
               for image in sorted(base["images"], key=lambda im: im["id"])]
    images_dir = out / "training" / "rgb"
    images_dir.mkdir(parents=True)
    images, records = [], []
    for i in range(n):
        image, pixels, annotation = samples[i % len(samples)]
        # ±2 levels of noise seeded by i: every crop differs after resizing and JPEG (a nudge of one pixel does not
        # survive them: the crops hashed alike and annotate hit its cache), and MediaPipe sees the same hand.
        noise = np.random.default_rng(i).integers(-2, 3, pixels.shape)
        pixels = np.clip(pixels.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        name = f"{i:08d}.jpg"
        cv2.imwrite(str(images_dir / name), pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append(dict(image, id=i, file_name=name))
        records.append(dict(annotation, id=i, image_id=i))
    (out / "annotations").mkdir()
    (out / "annotations" / "freihand_test.json").write_text(json.dumps(dict(base, images=images, annotations=records)))
    return out


def make_project(folder: Path, dataset: Path, workers: int) -> Path:
    folder.mkdir(parents=True)
    params = dict(ingest=dict(synthetic=None, freihand=dict(source=str(dataset), images_dir="training/rgb",
                                                             annotations=["annotations/freihand_test.json"],
                                                             crop_size=CROP)),
                  annotate=dict(workers=workers), shard=dict(crop_size=CROP))
    (folder / "params.yaml").write_text(json.dumps(params))
    return folder


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_stage(project: Path, stage: str, workers: int) -> dict:
    """One stage as DVC runs it: wall seconds, CPU seconds of the whole tree, peak RSS of the tree."""
    cmd = [sys.executable, str(ROOT / "stages" / f"{stage}.py"), *([] if stage == "shard" else ["freihand"])]
    env = {**os.environ, "HANDLOOM_WORKERS": str(workers), "TQDM_DISABLE": "1",
           "PYTHONPATH": str(ROOT / "src")}
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start, peak = time.perf_counter(), 0
    with open(project / f"{stage}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
        watched = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                peak = max(peak, tree_rss(watched))
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.05)
    seconds = time.perf_counter() - start
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{stage} failed in {project}: see {project / f'{stage}.log'}")
    cpu_s = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    return dict(seconds=round(seconds, 2), cpu_s=round(cpu_s, 2),
                peak_rss_mb=round(peak / 2**20, 1))


def run_pipeline(work: Path, dataset: Path, n: int, workers: int, tag: str, only: tuple[str, ...] = STAGES) -> dict:
    """Every stage in turn; those not in `only` run with 2 workers, untimed (a later stage reads their outputs)."""
    project = make_project(work / f"project-{tag}", dataset, workers)
    out = {}
    for stage in STAGES:
        if stage not in only:
            run_stage(project, stage, 2)
            continue
        load = os.getloadavg()[0]
        run = run_stage(project, stage, workers)
        run.update(s_per_image=round(run["seconds"] / n, 5), cpu_s_per_image=round(run["cpu_s"] / n, 5),
                   load=round(load, 1))
        print(f"{tag:>14} {stage:<9} {run['seconds']:8.1f} s  {1000 * run['s_per_image']:7.2f} ms/img  "
              f"cpu {1000 * run['cpu_s_per_image']:7.2f} ms/img  peak RSS {run['peak_rss_mb']:7.1f} MB  "
              f"(load {load:.1f})", flush=True)
        out[stage] = run
    shutil.rmtree(project / "data", ignore_errors=True)
    return out


def estimate(unit_cpu: dict[str, float], cores_per_machine: int = 16) -> dict:
    """Core-hours per stage for CORPUS images from CPU seconds per image, and the cluster that does it in a day."""
    hours = {stage: round(cpu * CORPUS / 3600, 1) for stage, cpu in unit_cpu.items()}
    total = sum(hours.values())
    return dict(core_hours=hours, total_core_hours=round(total, 1), cores_for_one_day=int(-(-total // 24)),
                machines_for_one_day=int(-(-total // (24 * cores_per_machine))), cores_per_machine=cores_per_machine)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(int(n) for n in results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for stage in STAGES:
        axes[0].plot(sizes, [1000 * results[str(n)][stage]["cpu_s_per_image"] for n in sizes], "o-", label=stage)
        axes[1].plot(sizes, [results[str(n)][stage]["peak_rss_mb"] for n in sizes], "o-", label=stage)
    for ax, label in zip(axes, ("CPU ms per image", "peak RSS of the stage's processes (MB)")):
        ax.set_xscale("log")
        ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
        ax.set_xlabel("images")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("ingest, annotate, shard on FreiHAND-layout data: cost and memory against N")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def readme_table(result: dict) -> str:
    """The README's tables: per stage and size, then the 10M-image estimate."""
    sizes = [str(n) for n in result["sizes"]]
    lines = ["| stage | " + " | ".join(f"{int(n):,} images: CPU ms/img, peak RSS" for n in sizes)
             + " | RSS growth | CPU/img growth | 2 workers vs 1 |", "|---" * (len(sizes) + 4) + "|"]
    for stage in STAGES:
        runs = [result["runs"][n][stage] for n in sizes]
        cells = [f"{1000 * run['cpu_s_per_image']:.1f}, {run['peak_rss_mb']:.0f} MB" for run in runs]
        speedup = result.get(f"{stage}_speedup_2_vs_1", "–")
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {result[f'{stage}_rss_growth']:.2f}x | "
                     f"{result[f'{stage}_cpu_per_image_growth']:.2f}x | {speedup}x |")
    capacity = result.get("parallel_capacity_2_vs_1")
    if capacity:
        lines.append(f"\n2 workers vs 1 at {result['speedup_size']} images; the machine's parallel capacity (what 2 "
                     f"processes did over 1 on pure CPU work) was {capacity[0]}x before and {capacity[1]}x after.")
    e = result["estimate_10m"]
    lines += ["", f"At FoundHand's scale ({CORPUS // 10**6}M images), from the CPU seconds per image measured at "
              f"{int(sizes[-1]):,} images:", "", "| stage | core-hours |", "|---|---|"]
    lines += [f"| {stage} | {hours:,.0f} |" for stage, hours in e["core_hours"].items()]
    lines += [f"| total | {e['total_core_hours']:,.0f} |", "",
              f"Done in a day: {e['cores_for_one_day']} cores, i.e. {e['machines_for_one_day']} machines of "
              f"{e['cores_per_machine']} cores (the workspace machine that writes the outputs streams them in key "
              "order, so add its disk bandwidth: ~10M JPEGs of ~20 KB, 200 GB, per stage)."]
    return "\n".join(lines)


def write_readme(result: dict) -> None:
    readme = ROOT / "README.md"
    head, rest = readme.read_text().split("<!-- scale:start -->\n", 1)
    tail = rest.split("<!-- scale:end -->", 1)[1]
    readme.write_text(head + "<!-- scale:start -->\n" + readme_table(result) + "\n<!-- scale:end -->" + tail)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    ap.add_argument("--speedup-size", type=int, default=1000, help="the size (one of --sizes) also run with 1 worker")
    ap.add_argument("--work", type=Path, default=None, help="temp folder (default: a new one, removed after)")
    ap.add_argument("--readme-only", action="store_true", help="rewrite the README's tables from results.json")
    ap.add_argument("--speedup-only", nargs="*", choices=STAGES, metavar="STAGE",
                    help="keep the size runs in results.json; measure only 2 workers vs 1 at --speedup-size for these "
                         "stages (all when none is named)")
    args = ap.parse_args()
    if args.readme_only:
        from record import RESULTS

        write_readme(json.loads(RESULTS.read_text())["scale"])
        return
    if args.speedup_only is not None:
        measure_speedup(args.speedup_size, tuple(args.speedup_only or STAGES), args.work)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="handloom-scale-"))
    started = dict(load=round(os.getloadavg()[0], 1), cpus=os.cpu_count())
    try:
        runs, speedup = {}, {}
        for n in sorted(args.sizes):
            dataset = make_dataset(n, work / f"freihand-{n}")
            if n == args.speedup_size:  # its 2-worker run is also the size's run; 1 worker right after it
                capacity = [parallel_capacity()]
                runs[str(n)] = run_pipeline(work, dataset, n, 2, f"{n} images")
                one = run_pipeline(work, dataset, n, 1, f"{n}, 1 worker")
                capacity.append(parallel_capacity())
                speedup = {stage: round(one[stage]["seconds"] / runs[str(n)][stage]["seconds"], 3) for stage in STAGES}
                speedup_runs = {"1": one, "2": runs[str(n)]}
                print(f"2 workers over 1: {speedup}; parallel capacity before/after: {capacity}", flush=True)
            else:
                runs[str(n)] = run_pipeline(work, dataset, n, 2, f"{n} images")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    small, large = str(min(args.sizes)), str(max(args.sizes))
    figures = {}
    for stage in STAGES:
        a, b = runs[small][stage], runs[large][stage]
        figures[f"{stage}_rss_growth"] = round(b["peak_rss_mb"] / a["peak_rss_mb"], 3)
        figures[f"{stage}_per_image_growth"] = round(b["s_per_image"] / a["s_per_image"], 3)
        figures[f"{stage}_cpu_per_image_growth"] = round(b["cpu_s_per_image"] / a["cpu_s_per_image"], 3)
        if speedup:
            figures[f"{stage}_speedup_2_vs_1"] = speedup[stage]
    result = dict(figures, sizes=sorted(args.sizes), runs=runs, started=started,
                  estimate_10m=estimate({s: runs[large][s]["cpu_s_per_image"] for s in STAGES}),
                  command="python benchmarks/scale.py " + " ".join(sys.argv[1:]),
                  setup=("growth: figure at the largest size / at the smallest (peak RSS of the stage's process "
                         "tree; wall and CPU seconds per image), 2 workers each; speedup_2_vs_1: wall time of the "
                         "stage with 1 worker / with 2 at speedup_size, beside parallel_capacity_2_vs_1 (pure-CPU "
                         "work 2 processes do over 1, before and after)"))
    if speedup:
        result.update(speedup_size=args.speedup_size, parallel_capacity_2_vs_1=capacity, speedup_runs=speedup_runs)
    record("scale", result)
    plot(runs, ROOT / "benchmarks" / "scale.png")
    write_readme(result)
    print(json.dumps(figures, indent=1))
    print(json.dumps(result["estimate_10m"], indent=1))


def measure_speedup(n: int, stages: tuple[str, ...], work: Path | None) -> None:
    """2 workers vs 1 at n images for `stages`, in turn, beside the parallel capacity; updates results.json."""
    from record import RESULTS

    result = json.loads(RESULTS.read_text())["scale"]
    folder = work or Path(tempfile.mkdtemp(prefix="handloom-speedup-"))
    try:
        dataset = make_dataset(n, folder / f"freihand-{n}")
        capacity = [parallel_capacity()]
        two = run_pipeline(folder, dataset, n, 2, f"{n} images", stages)
        one = run_pipeline(folder, dataset, n, 1, f"{n}, 1 worker", stages)
        capacity.append(parallel_capacity())
    finally:
        if work is None:
            shutil.rmtree(folder, ignore_errors=True)
    for stage in stages:
        result[f"{stage}_speedup_2_vs_1"] = round(one[stage]["seconds"] / two[stage]["seconds"], 3)
    result.update(speedup_size=n, parallel_capacity_2_vs_1=capacity, speedup_runs={"1": one, "2": two},
                  speedup_command="python benchmarks/scale.py " + " ".join(sys.argv[1:]))
    record("scale", result)
    write_readme(result)
    print({s: result[f"{s}_speedup_2_vs_1"] for s in stages}, "parallel capacity before/after:", capacity)


if __name__ == "__main__":
    main()
