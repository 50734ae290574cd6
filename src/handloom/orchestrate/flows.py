"""Prefect flow over the DVC stages: one task per stage in DVC's order, independent stages side by side."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from handloom.orchestrate.dvcrun import Log, StageRun, commit_stage, repro_stage, restore_outputs, stage_changes
from handloom.orchestrate.fanout import annotate_stage, dask_runner, fanout_dataset
from handloom.orchestrate.graph import StageNode, read_graph
from handloom.orchestrate.overrides import apply_overrides
from handloom.orchestrate.report import read_metrics, run_markdown

ARTIFACT_KEY = "handloom-pipeline"


@task(cache_policy=NO_CACHE, task_run_name="{stage}")
def run_stage(root: str, stage: str, timeout_s: float, fanout: dict | None = None) -> dict:
    """One stage through DVC; an annotate stage with `fanout` runs its chunks on Dask, then DVC commits it."""
    log = get_run_logger().info
    if fanout is None:
        return vars(repro_stage(root, stage, timeout_s, log))
    return vars(fanout_stage(root, stage, fanout, timeout_s, log))


def fanout_stage(root: str, stage: str, fanout: dict, timeout_s: float, log: Log) -> StageRun:
    """What `dvc repro --single-item` does, with the command replaced by the Dask fan-out that writes the
    same bytes: skip when `dvc status` is clean, check out of the cache when only outputs changed, else
    write the outputs and let `dvc commit` record them."""
    start = time.perf_counter()
    changes = stage_changes(root, stage)
    if not changes:
        status = "skipped"
    elif restore_outputs(root, stage, changes):
        status = "restored"
    else:
        runner = dask_runner(fanout["dask_address"], fanout["dask_workers"])
        annotate_stage(root, fanout["dataset"], fanout["chunk_size"], runner, timeout_s)
        commit_stage(root, stage, log)
        status = "ran"
    return StageRun(stage, status, round(time.perf_counter() - start, 3))


def _options(node: StageNode, network_stages: tuple[str, ...], retries: int, retry_delay_s: float) -> dict:
    """Retries with exponential backoff only where a failure may be the network's, not the code's."""
    if not (node.network or node.group in network_stages):
        return {}
    return dict(retries=retries, retry_delay_seconds=exponential_backoff(retry_delay_s), retry_jitter_factor=0.5)


def _outcome(future: PrefectFuture) -> dict:
    future.wait()
    state = future.state
    if state.is_completed():
        return future.result()
    if state.is_failed():
        try:
            error = str(state.result(raise_on_failure=False))  # the StageFailed itself, stderr tail included
        except Exception:  # noqa: BLE001 - a crash may leave no result; its message still names the stage
            error = state.message
        return dict(status="failed", error=error)
    return dict(status="not run", error="an upstream stage failed")


def _failure(outcomes: dict[str, dict]) -> str:
    failed = [s for s, o in outcomes.items() if o["status"] == "failed"]
    skipped = [s for s, o in outcomes.items() if o["status"] == "not run"]
    lines = [f"stage {', '.join(failed)} failed" + (f"; not run: {', '.join(skipped)}" if skipped else "")]
    return "\n\n".join(lines + [outcomes[s]["error"] for s in failed])


@flow(name="handloom-pipeline", task_runner=ThreadPoolTaskRunner())
def pipeline(targets: list[str] | None = None, params: dict[str, Any] | None = None, repo: str = ".",
             fanout: bool = True, annotate_chunk_size: int = 64, dask_address: str | None = None,
             dask_workers: int = 0, network_stages: tuple[str, ...] = ("ingest",),
             retries: int = 3, retry_delay_s: float = 10.0, timeout_s: float = 6 * 3600):
    """`dvc repro <targets>` as Prefect tasks.

    targets: DVC stages or foreach groups (all of dvc.yaml when empty), with everything upstream.
    params: params.yaml overrides, e.g. {"shard.max_samples": 500}; written to params.yaml first.
    fanout: annotate@<dataset> in chunks of `annotate_chunk_size` images on Dask: a local cluster of
      `dask_workers` processes (0 = one per core) or the scheduler at `dask_address`.
    network_stages: groups retried `retries` times with exponential backoff from `retry_delay_s`.
    timeout_s: a stage running longer is stopped and fails.
    """
    root = Path(repo).resolve()
    if params:
        get_run_logger().info("params.yaml overrides: %s", apply_overrides(root / "params.yaml", params))
    graph = read_graph(root, targets)
    fanout_options = dict(chunk_size=annotate_chunk_size, dask_address=dask_address, dask_workers=dask_workers)
    futures: dict[str, PrefectFuture] = {}
    for node in graph:  # dependencies first, so every upstream future exists already
        dataset = fanout_dataset(node.name, node.cmd) if fanout else None
        task_ = run_stage.with_options(**_options(node, network_stages, retries, retry_delay_s))
        futures[node.name] = task_.submit(str(root), node.name, timeout_s,
                                          dict(fanout_options, dataset=dataset) if dataset else None,
                                          wait_for=[futures[u] for u in node.upstream])
    outcomes = {name: _outcome(f) for name, f in futures.items()}
    _publish(root, graph, targets, outcomes)
    if any(o["status"] == "failed" for o in outcomes.values()):
        return Failed(message=_failure(outcomes))
    return outcomes


def _publish(root: Path, graph: list[StageNode], targets: list[str] | None, outcomes: dict[str, dict]) -> None:
    """The run's markdown artifact: outcomes, metrics, and every markdown output of the stages it ran."""
    reports = [root / out for node in graph for out in node.outs if out.endswith(".md")]
    title = f"handloom: dvc repro {' '.join(targets or [])}".strip()
    create_markdown_artifact(run_markdown(title, outcomes, read_metrics(root), reports), key=ARTIFACT_KEY,
                             description="stage outcomes, DVC metrics and the report of this run")
