"""Prefect flows over a tiny DVC repo: DVC's graph, side-by-side stages, skips, failures named by stage,
params overrides, timeouts, and the annotate fan-out writing byte for byte what the stage writes."""
import json
import os
import shutil
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from prefect.artifacts import Artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.testing.utilities import prefect_test_harness

from dvc_toy import dvc_status, make_annotate_repo, make_toy_repo
from handloom import schema
from handloom.annotate import pipeline as annotate_pipeline
from handloom.annotate.keypoints import HandDetection
from handloom.chunks import CHUNK_ENV, SCHEDULER_ENV
from handloom.io import write_json
from handloom.orchestrate.dvcrun import StageFailed, repro_stage
from handloom.orchestrate.fanout import chunked
from handloom.orchestrate.flows import ARTIFACT_KEY, pipeline
from handloom.orchestrate.graph import read_graph
from handloom.orchestrate.overrides import apply_overrides


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def toy(tmp_path):
    return make_toy_repo(tmp_path / "repo")


def test_graph_is_the_plan_dvc_makes(toy):
    assert {n.name: n.upstream for n in read_graph(toy)} == {
        "ingest@a": (), "ingest@b": (), "count": ("ingest@a",), "shard": ("ingest@a", "ingest@b")}
    assert [n.name for n in read_graph(toy, ["count"])] == ["ingest@a", "count"]
    assert read_graph(toy, ["ingest"])[0].group == "ingest"


def test_independent_stages_run_side_by_side_and_a_rerun_skips_them(toy, harness):
    outcomes = pipeline(repo=str(toy))
    assert {o["status"] for o in outcomes.values()} == {"ran"}
    a, b = (json.loads((toy / "data" / f"{k}.json").read_text()) for k in "ab")
    assert a["start"] < b["end"] and b["start"] < a["end"], "ingest@a and ingest@b did not overlap"
    assert "up to date" in dvc_status(toy)  # dvc.lock records every stage the flow ran
    lock = (toy / "dvc.lock").read_bytes()

    again = pipeline(repo=str(toy))
    assert {o["status"] for o in again.values()} == {"skipped"}
    assert (toy / "dvc.lock").read_bytes() == lock
    markdown = Artifact.get(ARTIFACT_KEY).data
    assert "| `shard` | skipped |" in markdown
    assert "| `metrics.json` | samples | 5 |" in markdown and "5 samples" in markdown  # metrics table, report


def test_a_failed_stage_fails_the_run_by_name_and_spares_independent_stages(toy, harness):
    state = pipeline(repo=str(toy), params={"ingest.b.fail": True}, retries=1, retry_delay_s=0.1, return_state=True)
    assert state.is_failed()
    assert state.message.startswith("stage ingest@b failed; not run: shard")
    assert "ingest b: source unreachable" in state.message  # the stage's stderr tail
    with get_client(sync_client=True) as client:
        this_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        runs = client.read_task_runs(flow_run_filter=this_run)
    states = {r.name: r.state.name for r in runs}
    assert states == {"ingest@a": "Completed", "count": "Completed", "ingest@b": "Failed", "shard": "NotReady"}
    assert (toy / "data" / "count.txt").read_text() == "2" and not (toy / "data" / "shard.json").exists()


def test_params_overrides_edit_existing_keys_only(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("# top\nshard:\n  max_mb: 64  # per shard\ningest:\n  synthetic:\n    seed: 0\n")
    assert apply_overrides(path, {"shard.max_mb": 8, "ingest": {"synthetic": {"seed": 3}}}) == {
        "shard.max_mb": 8, "ingest.synthetic.seed": 3}
    text = path.read_text()
    assert text.startswith("# top") and "max_mb: 8" in text and "# per shard" in text and "seed: 3" in text
    with pytest.raises(ValueError, match="'shard.max_mbb': no such key"):
        apply_overrides(path, {"shard.max_mb": 1, "shard.max_mbb": 2})
    assert path.read_text() == text  # a bad key writes nothing


def test_a_stage_past_its_timeout_is_stopped_with_its_command(toy):
    apply_overrides(toy / "params.yaml", {"ingest.a.sleep": 60})
    start = time.perf_counter()
    with pytest.raises(StageFailed, match="stage ingest@a timed out after 3 s"):
        repro_stage(toy, "ingest@a", timeout_s=3, log=lambda line: None)
    assert time.perf_counter() - start < 30
    assert not [p for p in psutil.process_iter(["cwd", "cmdline"]) if p.info["cwd"] == str(toy)]


def fake_detect(images, min_detection_confidence, workers):
    """A deterministic stand-in for MediaPipe: one right hand whose joints depend on the pixels."""
    found = []
    for image in images:
        k = schema.empty_keypoints()
        k[:21, :2] = image.reshape(-1, 3)[:21, :2]
        k[:21, 2] = image.mean() / 255
        found.append(HandDetection(k, ("right",), (float(image.mean() / 255), 0.0)))
    return found


def corrupt_one_image(ingest_dir):
    """Unreadable bytes for the third image, so the merge also carries a reject."""
    part = next((ingest_dir / schema.IMAGES_DIR).glob("part-*.parquet"))
    table = pq.read_table(part)
    jpegs = table.column("jpeg").to_pylist()
    jpegs[2] = b"not a jpeg"
    pq.write_table(table.set_column(table.schema.get_field_index("jpeg"), "jpeg", [jpegs]), part)


def test_annotate_on_dask_writes_byte_for_byte_what_local_processes_write(toy_dataset, tmp_path, monkeypatch):
    """The flow's fan-out is the stage itself with HANDLOOM_DASK_SCHEDULER set: chunks on the cluster, same bytes."""
    from distributed import LocalCluster

    ingest = toy_dataset / "ingest" / "toy"
    corrupt_one_image(ingest)
    monkeypatch.setattr(annotate_pipeline, "detect_many", fake_detect)
    # The toy images are noise that the fake detector reads: no quality filter, and a cache of the test's own.
    p = annotate_pipeline.AnnotateParams(min_mask_area=0, max_gt_disagreement=1, workers=1,
                                         cache_dir=str(tmp_path / "cache"))
    stats = annotate_pipeline.annotate_dataset(ingest, tmp_path / "stage", p)
    write_json(tmp_path / "stage" / "stats.json", stats)

    fan = tmp_path / "fan"
    # Threads, so the fake detector reaches the workers; tests/test_dask_cluster.py runs real processes.
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        monkeypatch.setenv(SCHEDULER_ENV, cluster.scheduler_address)
        monkeypatch.setenv(CHUNK_ENV, "2")
        other_cache = p.model_copy(update={"cache_dir": str(tmp_path / "c2")})
        fanned = annotate_pipeline.annotate_dataset(ingest, fan, other_cache)
    write_json(fan / "stats.json", fanned)
    for name in (schema.ANNOTATIONS_FILE, schema.REJECTS_FILE, "stats.json"):
        assert (fan / name).read_bytes() == (tmp_path / "stage" / name).read_bytes(), name
    assert stats["rejected"] == 1 and stats["annotated"] == 8
    assert len(list((tmp_path / "c2").rglob("*.npy"))) == 8  # one detection per readable image, on the cluster


@pytest.mark.slow
def test_a_fanned_out_stage_is_committed_as_dvc_repro_commits_it(toy_dataset, tmp_path, harness):
    """Real MediaPipe in real Dask worker processes against the real stage script run by `dvc repro`."""
    project = Path(__file__).resolve().parents[1]
    plain, fanned = (make_annotate_repo(tmp_path / name, toy_dataset / "ingest" / "toy", project) for name in "ab")
    assert pipeline(repo=str(plain), fanout=False)["annotate@synthetic"]["status"] == "ran"
    assert pipeline(repo=str(fanned), dask_workers=2)["annotate@synthetic"]["status"] == "ran"
    annotations = "data/annotations/synthetic/annotations.parquet"
    for path in (annotations, "data/annotations/synthetic/rejects.parquet", "reports/data/synthetic.json", "dvc.lock"):
        assert (fanned / path).read_bytes() == (plain / path).read_bytes(), path
    assert "up to date" in dvc_status(fanned)
    assert pipeline(repo=str(fanned))["annotate@synthetic"]["status"] == "skipped"
    shutil.rmtree(fanned / "data/annotations/synthetic")  # as `dvc repro` would: out of the cache, not rerun
    assert pipeline(repo=str(fanned))["annotate@synthetic"]["status"] == "restored"
    assert (fanned / annotations).read_bytes() == (plain / annotations).read_bytes()


def test_fanout_reaches_only_the_chunked_stage_commands():
    assert chunked("annotate", "python stages/annotate.py freihand")
    assert chunked("ingest", "python stages/ingest.py freihand") and chunked("shard", "python stages/shard.py")
    assert not chunked("train", "python stages/train.py")
    assert not chunked("annotate", "python my_annotator.py freihand")


def test_stages_do_not_inherit_the_thread_limits_dask_leaves_behind(monkeypatch):
    from distributed import LocalCluster

    from handloom.orchestrate.dvcrun import ENV_AT_START, NANNY_ENV, stage_env

    for key in NANNY_ENV:  # whatever the cluster writes is undone after the test
        monkeypatch.setenv(key, "sentinel")
        monkeypatch.delenv(key)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None):
        pass
    assert os.environ["OMP_NUM_THREADS"] == "1"  # the Nanny's pre-spawn-environ, in this process
    env = stage_env()
    assert {k: env.get(k) for k in NANNY_ENV} == ENV_AT_START
