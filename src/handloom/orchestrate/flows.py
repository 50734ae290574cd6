"""Prefect flow over the DVC stages: one task per stage in DVC's order, independent stages side by side."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from handloom.orchestrate.dvcrun import repro_stage, stage_changes
from handloom.orchestrate.fanout import DaskCluster, chunked
from handloom.orchestrate.graph import StageNode, read_graph
from handloom.orchestrate.overrides import apply_overrides
from handloom.orchestrate.report import read_metrics, run_markdown

ARTIFACT_KEY = "handloom-pipeline"


@task(cache_policy=NO_CACHE, task_run_name="{stage}")
def run_stage(root: str, stage: str, timeout_s: float, cluster: DaskCluster | None = None) -> dict:
    """One stage through DVC; a chunked stage with a `cluster` that has work to do runs its chunks there."""
    log = get_run_logger().info
    env = cluster.env() if cluster is not None and stage_changes(root, stage) else None
    return vars(repro_stage(root, stage, timeout_s, log, env))


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
             fanout: bool = True, dask_address: str | None = None, dask_workers: int = 0,
             network_stages: tuple[str, ...] = ("ingest",),
             retries: int = 3, retry_delay_s: float = 10.0, timeout_s: float = 6 * 3600):
    """`dvc repro <targets>` as Prefect tasks.

    targets: DVC stages or foreach groups (all of dvc.yaml when empty), with everything upstream.
    params: params.yaml overrides, e.g. {"shard.max_samples": 500}; written to params.yaml first.
    fanout: ingest, annotate and shard run their chunks on Dask (HANDLOOM_DASK_SCHEDULER in their environment): a
      local cluster of `dask_workers` processes (0 = one per core) or the scheduler at `dask_address`.
    network_stages: groups retried `retries` times with exponential backoff from `retry_delay_s`.
    timeout_s: a stage running longer is stopped and fails.
    """
    root = Path(repo).resolve()
    if params:
        get_run_logger().info("params.yaml overrides: %s", apply_overrides(root / "params.yaml", params))
    graph = read_graph(root, targets)
    cluster = DaskCluster(dask_address, dask_workers) if fanout else None
    futures: dict[str, PrefectFuture] = {}
    try:
        for node in graph:  # dependencies first, so every upstream future exists already
            task_ = run_stage.with_options(**_options(node, network_stages, retries, retry_delay_s))
            futures[node.name] = task_.submit(str(root), node.name, timeout_s,
                                              cluster if cluster and chunked(node.group, node.cmd) else None,
                                              wait_for=[futures[u] for u in node.upstream])
        for future in futures.values():
            future.wait()
    finally:
        if cluster is not None:
            cluster.close()
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
