"""Annotation benchmark: the annotate stage's images/s against a bare MediaPipe loop on the same images.

    .venv/bin/python benchmarks/annotate.py [--work DIR] [--rounds 3] [--workers N]

Like with like, two ways, rounds interleaved:
- one process: a bare loop (decode the JPEG, `Hands.process`) against the stage with workers 1, both in this
  process with a MediaPipe graph made before the clock starts. The stage starts each round from an empty cache,
  so it detects every image, and does all it does by default (params.yaml's annotate section: ground-truth
  masks, template captions, the quality filters, its two Parquet tables).
- a pool of N workers (default: one per core): a bare multiprocessing pool (each worker decodes and detects)
  against the stage with workers N; both pools are started, with a graph in each worker, before the clock
  (a stage run starts its pool once, whatever the dataset's size; pool_start_s reports that cost).
Then the stage again on its full cache (a rerun). Writes benchmarks/results.json["annotate"].
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from record import record

ROOT = Path(__file__).resolve().parents[1]
DATA = dict(n_sequences=4, n_frames=6, n_cameras=3)  # 72 rendered images at 256 px, every one distinct


def ingest_images(work: Path) -> Path:
    from handloom.datasets.ingest import ingest_synthetic
    from handloom.params import SyntheticParams

    out = work / "ingest"
    if not (out / "manifest.parquet").exists():
        ingest_synthetic(SyntheticParams(**DATA), out).write()
    return out


def jpegs(ingest_dir: Path) -> list[bytes]:
    from handloom.datasets.store import iter_images

    return [jpeg for _, jpeg, _ in iter_images(ingest_dir)]


# --- The bare loops ---------------------------------------------------------------------------------
_detector = None


def _init_bare_worker() -> None:
    global _detector
    from handloom.annotate.keypoints import make_detector

    _detector = make_detector(0.1)


def _bare_detect(jpeg: bytes) -> None:
    from handloom.io import decode_image

    _detector.process(decode_image(jpeg))


def bare_loop(ingest_dir: Path) -> int:
    images = jpegs(ingest_dir)  # read as iter_images reads them, inside the clock like the stage's reads
    for jpeg in images:
        _bare_detect(jpeg)
    return len(images)


def bare_pool(ingest_dir: Path, workers: int) -> tuple[dict, float]:
    """(throughput, seconds to start the pool and make a graph in each worker): started before the clock."""
    start = time.perf_counter()
    with mp.get_context("spawn").Pool(workers, _init_bare_worker) as pool:
        pool.map(_bare_detect, jpegs(ingest_dir)[:2 * workers], chunksize=1)
        started = time.perf_counter() - start
        return timed(lambda: len(list(pool.imap(_bare_detect, jpegs(ingest_dir), chunksize=4)))), started


# --- The stage ----------------------------------------------------------------------------------------
def stage(ingest_dir: Path, work: Path, workers: int, cache: Path | None = None) -> int:
    from handloom.annotate.pipeline import annotate_dataset
    from handloom.params import load_params

    cache = cache or Path(tempfile.mkdtemp(dir=work, prefix="cache-"))  # empty: every image is detected
    p = load_params(ROOT / "params.yaml").annotate.model_copy(update=dict(workers=workers, cache_dir=str(cache)))
    return annotate_dataset(ingest_dir, work / "out", p)["images"]


def stage_pool(ingest_dir: Path, work: Path, workers: int) -> tuple[dict, float]:
    """Like bare_pool: the stage's shared pool started and warmed before the clock (one per run in the stage)."""
    from handloom.annotate.keypoints import detect_many
    from handloom.annotate.pool import worker_pool
    from handloom.io import decode_image

    start = time.perf_counter()
    with worker_pool(workers):
        detect_many([decode_image(j) for j in jpegs(ingest_dir)[:2 * workers]], 0.1, workers)
        started = time.perf_counter() - start
        return timed(stage, ingest_dir, work, workers), started


def timed(fn, *args) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    n = fn(*args)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return dict(per_s=n / wall, per_cpu_s=n / cpu, images=n)


def median_of(rounds: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in rounds), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="keep the rendered images here between runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()
    load = round(os.getloadavg()[0], 2)
    work = args.work or Path(tempfile.mkdtemp(prefix="handloom-annotate-bench-"))
    for old in [*work.glob("cache-*"), work / "warm-cache"]:
        shutil.rmtree(old, ignore_errors=True)
    ingest_dir = ingest_images(work)

    _init_bare_worker()
    stage(ingest_dir, work, 1)  # warm-up: imports (torch for PCK), this process's MediaPipe graph, page cache
    bare_loop(ingest_dir)
    single = [(timed(bare_loop, ingest_dir), timed(stage, ingest_dir, work, 1)) for _ in range(args.rounds)]
    pools = [(bare_pool(ingest_dir, args.workers), stage_pool(ingest_dir, work, args.workers))
             for _ in range(args.rounds)]
    pool = [(bare, staged) for (bare, _), (staged, _) in pools]
    warm = work / "warm-cache"
    stage(ingest_dir, work, 1, warm)
    rerun = timed(stage, ingest_dir, work, 1, warm)
    for name, rounds in (("1 process", single), (f"{args.workers} workers", pool)):
        for bare, staged in rounds:
            print(f"{name}: bare {bare['per_s']:6.1f} img/s   stage {staged['per_s']:6.1f} img/s   "
                  f"ratio {staged['per_s'] / bare['per_s']:.3f}")

    bare1, stage1 = ([r[i] for r in single] for i in (0, 1))
    bareN, stageN = ([r[i] for r in pool] for i in (0, 1))
    result = dict(
        ratio=round(statistics.median(s["per_s"] / b["per_s"] for b, s in single), 3),
        ratio_per_round=[round(s["per_s"] / b["per_s"], 3) for b, s in single],
        cpu_time_ratio=round(statistics.median(s["per_cpu_s"] / b["per_cpu_s"] for b, s in single), 3),
        bare_per_s=median_of(bare1, "per_s"), stage_per_s=median_of(stage1, "per_s"),
        pool_workers=args.workers,
        pool_ratio=round(statistics.median(s["per_s"] / b["per_s"] for b, s in pool), 3),
        bare_pool_per_s=median_of(bareN, "per_s"), stage_pool_per_s=median_of(stageN, "per_s"),
        stage_pool_speedup=round(median_of(stageN, "per_s") / median_of(stage1, "per_s"), 3),
        pool_start_s=dict(bare=round(statistics.median(t for (_, t), _ in pools), 2),
                          stage=round(statistics.median(t for _, (_, t) in pools), 2)),
        cached_rerun_per_s=round(rerun["per_s"], 1), images=stage1[0]["images"], rounds=args.rounds,
        setup="ratio: stage (workers 1, empty cache, params.yaml's annotate section) / bare loop (decode + "
              "Hands.process), one process each, graph made before the clock, wall-clock images/s, median of "
              "rounds; pool_ratio: the same with `pool_workers` processes, each pool started and its graphs "
              "made before the clock (pool_start_s: what that took); stage_pool_speedup: stage with the pool "
              "over stage in one process; "
              f"synthetic images at 256 px ({DATA})",
        cpus=os.cpu_count(), load_average_at_start=load, command="python benchmarks/annotate.py")
    print(json.dumps(result, indent=2))
    record("annotate", result)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
