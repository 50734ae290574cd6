"""annotate@<dataset> fanned out on Dask: one Prefect task per chunk of keys, then a merge into the stage's outputs."""
from __future__ import annotations

import os
import shutil
from itertools import islice
from pathlib import Path

import pyarrow.parquet as pq
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect_dask import DaskTaskRunner

from handloom import schema
from handloom.annotate.pipeline import annotate_images, write_annotations
from handloom.datasets.store import iter_images, read_manifest
from handloom.io import read_table, write_json, write_table
from handloom.params import AnnotateParams, load_params

# The fan-out stands in for exactly this command and writes what stages/annotate.py writes; a stage
# whose command says anything else runs through `dvc repro` instead.
ANNOTATE_CMD = "python stages/annotate.py {dataset}"
PARTS_DIR = ".dvc/tmp/handloom-fanout"  # DVC ignores .dvc/tmp: a crashed run leaves no stray file in an output


def fanout_dataset(stage: str, cmd: str) -> str | None:
    """The dataset of an annotate@<dataset> stage that still runs stages/annotate.py, else None."""
    group, _, dataset = stage.partition("@")
    return dataset if group == "annotate" and cmd == ANNOTATE_CMD.format(dataset=dataset) else None


def dask_runner(address: str | None = None, n_workers: int = 0, processes: bool = True) -> DaskTaskRunner:
    """A runner on the scheduler at `address`, or on a local cluster of single-threaded worker processes:
    each holds one MediaPipe graph, and the per-image Python work (decode, masks, PNG) needs the GIL."""
    if address:
        return DaskTaskRunner(address=address)
    # Loopback only; no per-chunk progress bars: interleaved from every worker they say nothing the
    # chunk tasks' states do not.
    local = dict(host="127.0.0.1", dashboard_address=None, env={"TQDM_DISABLE": "1"}) if processes else {}
    return DaskTaskRunner(cluster_kwargs=dict(n_workers=n_workers or os.cpu_count(), threads_per_worker=1,
                                              processes=processes, **local))


def chunk_ranges(n: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def count_images(ingest_dir: str | Path) -> int:
    parts = (Path(ingest_dir) / schema.IMAGES_DIR).glob("part-*.parquet")
    return sum(pq.ParquetFile(p).metadata.num_rows for p in parts)


def _part(parts_dir: str | Path, kind: str, index: int) -> Path:
    return Path(parts_dir) / f"{kind}-{index:05d}.parquet"


@task(cache_policy=NO_CACHE, task_run_name="annotate[{start}:{stop}]")
def annotate_chunk(ingest_dir: str, parts_dir: str, index: int, start: int, stop: int, p: AnnotateParams) -> int:
    """Annotate images [start, stop) in key order into part files; returns how many were read."""
    images = list(islice(iter_images(ingest_dir), start, stop))
    manifest = read_manifest(ingest_dir).set_index("key")
    # One detector in this worker: the cluster is the parallelism, a process pool per chunk would fight it.
    rows, rejects = annotate_images(images, manifest, p.model_copy(update={"workers": 1}))
    write_table(_part(parts_dir, "annotations", index), schema.table_from_rows(rows, schema.ANNOTATIONS))
    write_table(_part(parts_dir, "rejects", index), schema.table_from_rows(rejects, schema.REJECTS))
    return len(images)


@task(cache_policy=NO_CACHE)
def merge_chunks(ingest_dir: str, parts_dir: str, n_chunks: int, n_images: int, out_dir: str, stats_path: str) -> dict:
    """The parts, in key order, written as the stage writes them: byte-identical outputs."""
    def rows(kind: str) -> list[dict]:
        return [r for i in range(n_chunks) for r in read_table(_part(parts_dir, kind, i)).to_pylist()]

    shutil.rmtree(out_dir, ignore_errors=True)  # as `dvc repro` clears an output before the command
    manifest = read_manifest(ingest_dir).set_index("key")
    stats = write_annotations(Path(out_dir), manifest, n_images, rows("annotations"), rows("rejects"))
    write_json(stats_path, stats)
    shutil.rmtree(parts_dir, ignore_errors=True)
    return stats


@flow(name="annotate-fanout")
def annotate_fanout(ingest_dir: str, out_dir: str, stats_path: str, parts_dir: str, p: AnnotateParams,
                    chunk_size: int = 64) -> dict:
    """Annotate one dataset in chunks on the flow's task runner (Dask) and merge the parts."""
    shutil.rmtree(parts_dir, ignore_errors=True)
    ranges = chunk_ranges(count_images(ingest_dir), chunk_size)
    futures = [annotate_chunk.submit(ingest_dir, parts_dir, i, start, stop, p)
               for i, (start, stop) in enumerate(ranges)]
    n_images = sum(f.result() for f in futures)
    return merge_chunks(ingest_dir, parts_dir, len(ranges), n_images, out_dir, stats_path)


def annotate_stage(root: str | Path, dataset: str, chunk_size: int, runner: DaskTaskRunner,
                   timeout_s: float | None = None) -> dict:
    """What `python stages/annotate.py <dataset>` does at the repo root, fanned out on `runner`."""
    root = Path(root)
    p = load_params(root / "params.yaml").annotate
    # The stage resolves cache_dir at the repo root, where DVC runs it; this flow's workers may run elsewhere.
    p = p.model_copy(update={"cache_dir": str(root / p.cache_dir)})
    return annotate_fanout.with_options(task_runner=runner, timeout_seconds=timeout_s)(
        ingest_dir=str(root / "data/ingest" / dataset), out_dir=str(root / "data/annotations" / dataset),
        stats_path=str(root / "reports/data" / f"{dataset}.json"),
        parts_dir=str(root / PARTS_DIR / f"annotate@{dataset}"), p=p, chunk_size=chunk_size)
