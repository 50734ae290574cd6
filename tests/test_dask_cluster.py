"""The chunked stages on a real Dask cluster: `dask scheduler` and two `dask worker` processes on 127.0.0.1, started
here as a user would start them, and `dvc repro` of ingest -> annotate -> shard pointed at the scheduler through
HANDLOOM_DASK_SCHEDULER. Every output byte (and dvc.lock) equals a local run's, also when one worker is killed
while annotate runs: the scheduler runs its chunks again on the other."""
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from handloom.chunks import CHUNK_ENV, SCHEDULER_ENV

PROJECT = Path(__file__).resolve().parents[1]
OUTPUTS = ("data/ingest", "data/annotations", "data/shards", "reports/data", "dvc.lock")
PARAMS = dict(ingest=dict(synthetic=dict(n_sequences=4, n_frames=2, n_cameras=2, image_size=128, val_fraction=0.25,
                                         test_fraction=0.0)),
              annotate=dict(workers=2), shard=dict(crop_size=64, max_samples=6))
DASK = str(Path(sys.executable).with_name("dask"))


def project_copy(root: Path) -> Path:
    """The project's stages, library and dvc.yaml in a fresh git + DVC repo, with tiny params."""
    root.mkdir()
    for name in ("stages", "src"):
        shutil.copytree(PROJECT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT / "dvc.yaml", root)
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=root, check=True)
    return root


def repro(root: Path, env: dict) -> None:
    out = subprocess.run([sys.executable, "-m", "dvc", "repro", "shard"], cwd=root, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(root / "src"), **env}, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]


def digests(root: Path) -> dict[str, str]:
    files = [f for name in OUTPUTS for f in ([root / name] if (root / name).is_file() else (root / name).rglob("*"))
             if f.is_file()]
    return {f.relative_to(root).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(tmp_path):
    """(address, [worker processes], scheduler log): the scheduler and two single-threaded workers without a
    nanny, so a killed worker stays dead."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(PROJECT / "src"), "TQDM_DISABLE": "1"}
    log = tmp_path / "scheduler.log"
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"), start_new_session=True)]
    # Through handloom.cpu, as the README starts workers: their CPU dispatch pinned like the stages'.
    procs += [subprocess.Popen([sys.executable, "-m", "handloom.cpu", DASK, "worker", address, "--nthreads", "1",
                                "--no-nanny", "--no-dashboard",
                                "--host", "127.0.0.1", "--local-directory", str(tmp_path / f"worker{i}")],
                               env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True) for i in range(2)]
    try:
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address, procs[1:], log
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def kill_when_annotating(root: Path, worker: subprocess.Popen, killed: dict) -> None:
    """SIGKILL `worker` as soon as the first chunk's annotations reach the cache, while annotate still runs."""
    cache, out = root / ".handloom-cache" / "annotations", root / "data/annotations/synthetic/annotations.parquet"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if cache.exists() and any(cache.rglob("*.npy")):
            killed["mid_stage"] = not out.exists()
            worker.send_signal(signal.SIGKILL)
            killed["at"] = time.time()
            return
        time.sleep(0.05)


@pytest.mark.slow  # two pipelines of 16 images and a cluster start: about a minute on two busy cores
def test_stages_on_a_dask_cluster_write_the_bytes_of_a_local_run_even_when_a_worker_dies(tmp_path, cluster):
    address, workers, scheduler_log = cluster
    small_chunks = {CHUNK_ENV: "2"}  # many chunks in flight, so the killed worker holds some
    local = project_copy(tmp_path / "local")
    repro(local, {**small_chunks, "HANDLOOM_WORKERS": "1"})

    distributed = project_copy(tmp_path / "distributed")
    killed: dict = {}
    killer = threading.Thread(target=kill_when_annotating, args=(distributed, workers[0], killed))
    killer.start()
    repro(distributed, {**small_chunks, SCHEDULER_ENV: address})
    killer.join()

    assert killed.get("mid_stage"), f"the worker was not killed while annotate ran: {killed}"
    assert workers[0].wait(timeout=10) == -signal.SIGKILL and workers[1].poll() is None
    annotations = distributed / "data/annotations/synthetic/annotations.parquet"
    assert annotations.stat().st_mtime > killed["at"]  # written after the kill, by the surviving worker's chunks
    # The stages did use the cluster: this fixture's client, then ingest's, annotate's and shard's.
    assert scheduler_log.read_text().count("Receive client connection") >= 4
    expected = digests(local)
    assert len([f for f in expected if f.endswith(".tar")]) >= 2
    assert digests(distributed) == expected
