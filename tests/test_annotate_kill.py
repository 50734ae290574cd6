"""kill -9 in the middle of `stages/annotate.py`, then a rerun: it finishes, keeps what the killed run cached, and
writes byte for byte what an uninterrupted run writes."""
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_toy_dataset

PROJECT = Path(__file__).resolve().parents[1]
SPECS = [("train", f"seq{s}", f, c) for s in range(20) for f in range(4) for c in "01"]  # 160 images, 3 chunks
PARAMS = "annotate:\n  workers: 2\n  mask_backend: grabcut\n  min_mask_area: 0\n"  # chunks of 64 images
OUTPUTS = ("data/annotations/toy/annotations.parquet", "data/annotations/toy/rejects.parquet", "reports/data/toy.json")


def make_project(root: Path, ingest: Path) -> Path:
    shutil.copytree(ingest, root / "data" / "ingest" / "toy")
    (root / "params.yaml").write_text(PARAMS)
    return root


def start_stage(root: Path) -> subprocess.Popen:
    # A session of its own, so the kill takes the pool's workers too, as a crash of the machine would.
    return subprocess.Popen([sys.executable, str(PROJECT / "stages" / "annotate.py"), "toy"], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def run_stage(root: Path) -> None:
    proc = start_stage(root)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]


def cache_files(root: Path) -> dict[Path, int]:
    """Finished cache entries; a writer's temp file (a dot name, renamed into place when complete) is none."""
    return {f: f.stat().st_mtime_ns for f in (root / ".handloom-cache").rglob("[!.]*") if f.is_file()}


def digests(root: Path) -> dict[str, str]:
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in OUTPUTS}


@pytest.mark.slow
def test_kill_then_rerun_gives_the_bytes_of_an_uninterrupted_run(tmp_path):
    ingest = write_toy_dataset(tmp_path / "source", "toy", SPECS) / "ingest" / "toy"
    killed = make_project(tmp_path / "killed", ingest)
    proc = start_stage(killed)
    deadline = time.monotonic() + 300
    while not cache_files(killed) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the stage finished before the kill"
    assert not any((killed / name).exists() for name in OUTPUTS)
    done_before_kill = cache_files(killed)
    assert 0 < len(done_before_kill) < 2 * len(SPECS)  # keypoints + masks of every image when complete

    run_stage(killed)
    after = cache_files(killed)
    assert all(after[f] == mtime for f, mtime in done_before_kill.items())  # reused, not redone
    assert len(after) == 2 * len(SPECS)

    clean = make_project(tmp_path / "clean", ingest)
    run_stage(clean)
    assert digests(killed) == digests(clean)
