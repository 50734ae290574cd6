"""kill -9 in the middle of each pipeline stage, then a rerun: it finishes with every output byte for byte what an
uninterrupted run writes, no temp file left over, what the killed run finished (the annotation cache) reused rather
than redone, and every input accounted for in the outputs or the rejects.

One tiny project runs the whole of dvc.yaml once, uninterrupted; each stage is then replayed from a copy of the
project as it stood before that stage, killed at a seeded random rename (killpoint.py: the instant a finished temp
file becomes an output) and rerun. The stages, their commands and their outputs are read from dvc.yaml.

The train stage's kill test is tests/test_train_resume.py::test_killed_stage_resumes_bit_exact: DVCLive stamps its
rows with the wall clock, so there the weights, optimizer state, curves and sample grids are compared, not files.
"""
import hashlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from handloom import schema
from handloom.datasets.store import read_manifest, read_rejects
from handloom.io import read_table
from train_project import TINY_TRAIN

PROJECT = Path(__file__).resolve().parents[2]
KILLPOINT = Path(__file__).with_name("killpoint.py")
DATASET = "synthetic"
SEED = 11
NOT_KILLED = {"train": "tests/test_train_resume.py"}
SYNTHETIC = dict(n_sequences=3, n_frames=2, n_cameras=2, image_size=128, val_fraction=0.4, test_fraction=0.0)
PARAMS = dict(
    ingest={DATASET: SYNTHETIC},
    annotate=dict(workers=2),  # a process pool: the kill must take its workers too
    shard=dict(crop_size=64, max_samples=4),
    train=dict(TINY_TRAIN, max_steps=4, sample_every_n_steps=2, checkpoint_every_n_steps=2),
    evaluate=dict(n_pairs=4, sample_steps=2),
    report=dict(grid_rows=2),
)


@dataclass
class Stage:
    name: str
    cmd: list[str]
    outputs: list[str]   # outs, metrics and plots, relative to the project
    before: Path = None  # a copy of the project as it stood before the uninterrupted run of this stage
    renames: int = 0     # how many the uninterrupted run made: the kill points to draw from


def dvc_stages() -> list[Stage]:
    """dvc.yaml's stages in file (DAG) order, foreach stages expanded for the synthetic dataset."""
    stages = []
    for name, stage in yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"].items():
        stage = yaml.safe_load(yaml.safe_dump(stage.get("do", stage)).replace("${key}", DATASET))
        outputs = [next(iter(o)) if isinstance(o, dict) else o
                   for field in ("outs", "metrics", "plots") for o in stage.get(field, [])]
        stages.append(Stage(name, shlex.split(stage["cmd"]), outputs))
    return stages


KILLED = [s.name for s in dvc_stages() if s.name not in NOT_KILLED]


def start(project: Path, stage: Stage, kill_at: int) -> subprocess.Popen:
    python, script, *args = stage.cmd
    assert python == "python", stage.cmd
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "OMP_NUM_THREADS": "1"}
    # A session of its own: killpoint.py kills the group, which must not hold pytest.
    return subprocess.Popen([sys.executable, str(KILLPOINT), str(kill_at), str(project / ".renames"),
                             str(PROJECT / script), *args], cwd=project, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def run_to_end(project: Path, stage: Stage) -> int:
    """Run the stage uninterrupted; the number of renames it made."""
    proc = start(project, stage, 0)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{stage.name}: {err[-3000:]}"
    return int((project / ".renames").read_text())


def files(root: Path, paths: list[str]) -> list[Path]:
    found = []
    for p in map(root.joinpath, paths):
        found += sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p] if p.exists() else []
    return found


def digests(root: Path, paths: list[str]) -> dict[str, str]:
    """Every file under the outputs, temp files included, by sha256."""
    return {f.relative_to(root).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in files(root, paths)}


def finished_elsewhere(project: Path, stage: Stage) -> dict[str, int]:
    """mtimes of the finished files outside the stage's outputs: its inputs, and the annotation cache."""
    outputs = {f.relative_to(project).as_posix() for f in files(project, stage.outputs)}
    return {f.relative_to(project).as_posix(): f.stat().st_mtime_ns for f in project.rglob("[!.]*")
            if f.is_file() and f.relative_to(project).as_posix() not in outputs and not in_staging(project, f)}


def in_staging(project: Path, f: Path) -> bool:
    """Inside a folder a stage builds its next output in (io.staging_dir): its own temp files, not finished ones."""
    return any(part.startswith(".") and part.endswith((".staging", ".old")) for part in f.relative_to(project).parts)


# --- Every input is in the outputs or the rejects -------------------------------------------------
def ingest_accounts(project: Path) -> None:
    out = project / "data/ingest" / DATASET
    keys = list(read_manifest(out)["key"]) + list(read_rejects(out)["key"])
    assert len(keys) == len(set(keys)) == SYNTHETIC["n_sequences"] * SYNTHETIC["n_frames"] * SYNTHETIC["n_cameras"]


def annotate_accounts(project: Path) -> None:
    out = project / "data/annotations" / DATASET
    annotated = read_table(out / schema.ANNOTATIONS_FILE).column("key").to_pylist()
    rejected = list(read_rejects(out)["key"])
    assert annotated and not set(annotated) & set(rejected)
    assert sorted(annotated + rejected) == sorted(read_manifest(project / "data/ingest" / DATASET)["key"])


def shard_accounts(project: Path) -> None:
    shards = project / "data/shards"
    sharded = read_table(shards / schema.INDEX_FILE).column("key").to_pylist()
    annotated = read_table(project / "data/annotations" / DATASET / schema.ANNOTATIONS_FILE).column("key")
    assert sorted(sharded + list(read_rejects(shards)["key"])) == sorted(annotated.to_pylist())


def evaluate_accounts(project: Path) -> None:
    samples = np.load(project / "data/eval/samples.npz")
    n = json.loads((project / "reports/metrics.json").read_text())["n_pairs"]
    assert n == len(samples["keys"]) == len(samples["generated"]) > 0


def report_accounts(project: Path) -> None:
    figures = re.findall(r"\]\((figures/[^)]+)\)", (project / "reports/report.md").read_text())
    assert figures and all((project / "reports" / f).is_file() for f in figures)


ACCOUNTS = {"ingest": ingest_accounts, "annotate": annotate_accounts, "shard": shard_accounts,
            "evaluate": evaluate_accounts, "report": report_accounts}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> tuple[Path, dict[str, Stage]]:
    """The uninterrupted run of every stage, in one project; each stage keeps a copy of what it started from."""
    root = tmp_path_factory.mktemp("pipeline")
    clean = root / "clean"
    clean.mkdir()
    (clean / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    stages = {}
    for stage in dvc_stages():
        stage.before = shutil.copytree(clean, root / f"before-{stage.name}")
        stage.renames = run_to_end(clean, stage)
        stages[stage.name] = stage
    return clean, stages


@pytest.mark.slow  # the pipeline once (~2 min on two busy cores), then each stage killed and rerun
@pytest.mark.parametrize("name", KILLED)
def test_killed_stage_reruns_to_the_bytes_of_an_uninterrupted_run(pipeline, name, tmp_path):
    clean, stages = pipeline
    stage = stages[name]
    project = shutil.copytree(stage.before, tmp_path / "project")
    kill_at = random.Random(f"{SEED}-{name}").randint(1, stage.renames)
    proc = start(project, stage, kill_at)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, f"{name} was not killed at rename {kill_at}: {err[-3000:]}"
    left = finished_elsewhere(project, stage)

    run_to_end(project, stage)
    assert digests(project, stage.outputs) == digests(clean, stage.outputs)
    after = finished_elsewhere(project, stage)
    assert {f: after.get(f) for f in left} == left  # reused, not redone
    if name in ACCOUNTS:
        ACCOUNTS[name](project)


def test_every_stage_is_killed_here_or_in_its_own_test():
    names = [s.name for s in dvc_stages()]
    assert {"ingest", "annotate", "shard", "evaluate", "report"} <= set(KILLED)
    assert set(NOT_KILLED) <= set(names) and all((PROJECT / path).is_file() for path in NOT_KILLED.values())
