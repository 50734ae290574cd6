"""Loader benchmark: training-pair throughput against a bare `webdataset.WebDataset(...).decode("rgb8")` loop on the
same shards, and the loader's peak RSS at 1x and 10x the shards, each run in a fresh subprocess.

    .venv/bin/python benchmarks/loader.py [--work DIR] [--rounds 5]

Writes the figures to benchmarks/results.json under "loader". The data is the synthetic default (a few
rendered sequences, copied under new sequence names to reach the sizes) annotated with its exact keypoints.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import record

ROOT = Path(__file__).resolve().parents[1]
BASE = dict(n_sequences=2, n_frames=6, n_cameras=3)  # 36 rendered images
COPIES = {"1x": 12, "10x": 120}                      # 432 (the default dataset's size) and 4320 samples
MAX_SAMPLES = 64                                     # per shard: 6 and 60 shards (4 sequences each)
BATCH = 16


# --- Data ------------------------------------------------------------------------------------------
def render_base(work: Path) -> Path:
    """The synthetic renderer's frames, ingested, with annotations taken from their exact keypoints and masks."""
    from handloom import schema
    from handloom.datasets.ingest import ingest_synthetic
    from handloom.io import write_table
    from handloom.params import SyntheticParams

    base = work / "base"
    if not (base / "annotations.parquet").exists():
        ingest_synthetic(SyntheticParams(**BASE), base / "ingest").write()
        rows = [dict(key=r["key"], mp_keypoints=r["gt_keypoints"], mp_handedness=["right"], mp_scores=[1.0, 0.0],
                     keypoint_backend="ground_truth", mask_png=im["mask_png"], mask_area=1,
                     mask_backend="ground_truth", caption="a hand", caption_backend="template")
                for r, im in zip(*base_tables(base / "ingest"))]
        write_table(base / "annotations.parquet", schema.table_from_rows(rows, schema.ANNOTATIONS))
    return base


def base_tables(ingest: Path) -> tuple[list[dict], list[dict]]:
    from handloom import schema
    from handloom.io import read_table

    manifest = read_table(ingest / schema.MANIFEST_FILE).to_pylist()
    images = {r["key"]: r for p in sorted((ingest / schema.IMAGES_DIR).glob("*.parquet"))
              for r in read_table(p).to_pylist()}
    return manifest, [images[r["key"]] for r in manifest]


def copies_dataset(base: Path, work: Path, copies: int) -> Path:
    """`copies` x the base samples, each copy under new sequence names, then sharded."""
    from handloom import schema
    from handloom.datasets.store import DatasetWriter, EncodedSample
    from handloom.io import read_table, write_table
    from handloom.params import ShardParams
    from handloom.shards.writer import write_shards

    out = work / f"copies{copies}"
    if (out / "shards" / schema.INDEX_FILE).exists():
        return out / "shards"
    manifest, images = base_tables(base / "ingest")
    annotations = read_table(base / "annotations.parquet").to_pylist()
    writer = DatasetWriter(out / "ingest" / "bench", "bench", license="CC0-1.0", source="benchmark")
    renamed = []
    for c in range(copies):
        for row, image, note in zip(manifest, images, annotations):
            k = schema.SampleKey.parse(row["key"])
            key = str(schema.SampleKey("bench", k.split, f"{k.sequence}c{c:03d}", k.frame, k.camera))
            writer.add_encoded(EncodedSample(dict(row, key=key, dataset="bench", sequence=f"{k.sequence}c{c:03d}"),
                                             image["jpeg"], image["mask_png"], (key,)))
            renamed.append(dict(note, key=key))
    writer.write()
    renamed.sort(key=lambda r: r["key"])  # in key order, as the annotate stage writes them
    write_table(out / "annotations" / "bench" / schema.ANNOTATIONS_FILE,
                schema.table_from_rows(renamed, schema.ANNOTATIONS))
    write_shards({"bench": (out / "ingest" / "bench", out / "annotations" / "bench")}, out / "shards",
                 ShardParams(crop_size=256, max_samples=MAX_SAMPLES))
    return out / "shards"


# --- Measurements, each in its own process ---------------------------------------------------------
def shard_set(shards: Path) -> tuple[list[str], object, int]:
    from handloom import schema
    from handloom.io import read_table

    index = read_table(shards / schema.INDEX_FILE).to_pandas()
    pairs = read_table(shards / schema.PAIRS_FILE).to_pandas()
    return [str(shards / s) for s in sorted(index.shard.unique())], pairs, len(index)


def bare_loop(shards: Path) -> int:
    import webdataset as wds

    urls, _, _ = shard_set(shards)
    return sum(1 for _ in wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8"))


def loader_loop(shards: Path) -> int:
    """One pass's worth of training pairs from the loader as params.yaml configures it (augmentations on)."""
    from handloom.params import load_params
    from handloom.shards.reader import ExampleSpec, pair_dataset

    p = load_params(ROOT / "params.yaml").train
    urls, pairs, n = shard_set(shards)
    spec = ExampleSpec(p.resolution, p.conditioning, p.heatmap_sigma, augment=p.augment)
    batches = pair_dataset(urls, pairs, spec, batch_size=BATCH, seed=0, batches_per_epoch=n // BATCH)
    return sum(len(b["flag"]) for b in batches)


def child(kind: str, shards: Path) -> None:
    """Print {samples, wall and CPU seconds, peak RSS} of one loop; one thread, as in a DataLoader worker."""
    import cv2
    import torch

    import handloom.shards.reader  # noqa: F401  (imports before the baseline RSS)

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    wall, cpu = time.perf_counter(), time.process_time()
    samples = {"bare": bare_loop, "loader": loader_loop}[kind](shards)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps(dict(samples=samples, wall_s=wall, cpu_s=cpu, rss_imports_mb=rss_imports,
                          rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))


def measure(kind: str, shards: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", kind, str(shards)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode:
        raise RuntimeError(f"{kind} on {shards} failed:\n{done.stderr}")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    return dict(r, per_s=r["samples"] / r["wall_s"], per_cpu_s=r["samples"] / r["cpu_s"])


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def throughput(rounds: list[tuple[dict, dict]], key: str) -> dict:
    """Median over paired rounds: each round runs the two loops back to back, which cancels slow drift."""
    return dict(ratio=round(median([lo[key] / b[key] for b, lo in rounds]), 3),
                loader_samples_per_s=round(median([lo[key] for _, lo in rounds]), 1),
                webdataset_samples_per_s=round(median([b[key] for b, _ in rounds]), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="keep the rendered data and shards here between runs")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "SHARDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], Path(args.child[1]))
    load = round(os.getloadavg()[0], 2)
    work = args.work or Path(tempfile.mkdtemp(prefix="handloom-loader-bench-"))
    base = render_base(work)
    shards = {scale: copies_dataset(base, work, n) for scale, n in COPIES.items()}
    measure("bare", shards["10x"])  # reads the shards into the page cache
    rounds = [(measure("bare", shards["10x"]), measure("loader", shards["10x"])) for _ in range(args.rounds)]
    for bare, loader in rounds:
        print(f"bare {bare['per_s']:6.1f}/s ({bare['per_cpu_s']:6.1f}/CPU-s)   "
              f"loader {loader['per_s']:6.1f}/s ({loader['per_cpu_s']:6.1f}/CPU-s)")
    rss = {scale: measure("loader", s) for scale, s in shards.items()}
    result = dict(
        # On a shared machine the CPU time a single-threaded loop takes is steadier than its wall time.
        **throughput(rounds, "per_cpu_s"), wall_clock=throughput(rounds, "per_s"), rounds=args.rounds,
        rss_mb_1x=round(rss["1x"]["rss_mb"], 1), rss_mb_10x=round(rss["10x"]["rss_mb"], 1),
        rss_growth=round(rss["10x"]["rss_mb"] / rss["1x"]["rss_mb"], 3),
        rss_mb_after_imports=round(rss["1x"]["rss_imports_mb"], 1),
        samples={scale: shard_set(s)[2] for scale, s in shards.items()},
        shards={scale: len(shard_set(s)[0]) for scale, s in shards.items()},
        setup=f"each loop in a fresh process, one thread; samples/s per CPU-second (wall_clock: per second); "
              f"loader = decode + pairs + augment + conditioning + batches of {BATCH}, as params.yaml's train "
              f"section sets them; shards of {MAX_SAMPLES} samples at 256 px; throughput on the 10x shards",
        cpus=os.cpu_count(), load_average_at_start=load, command="python benchmarks/loader.py")
    print(json.dumps(result, indent=2))
    record("loader", result)


if __name__ == "__main__":
    main()
