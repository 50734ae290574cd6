"""A flaky remote: the loopback S3 server is killed in the middle of a `dvc push`, a `dvc pull` and a shard stream,
and started again on the same port a moment later (a fault injected on purpose). Each job must finish through the
retries (botocore's, s3fs's, handloom.shards.remote's) with the very bytes of an undisturbed run."""
import hashlib
import shutil
import threading
import time
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch

from dvc_remote import DVC, clone, run, s3_credentials
from handloom.shards.reader import ExampleSpec
from handloom.train.data import PairStream
from train_project import toy_shards

DATA = "data/blobs"
N_FILES, FILE_SIZE = 120, 64 << 10
DOWN_S = 2.0  # how long the server stays away: longer than botocore's default retries last
# DVC's S3 remote has no retry option: botocore reads these (README, Remote storage). The loader sets its own.
RETRIES = dict(AWS_RETRY_MODE="standard", AWS_MAX_ATTEMPTS="10")


class Outage(threading.Thread):
    """Kill the server once `due()` is true, then start it again on the same port after DOWN_S."""

    def __init__(self, server, due):
        super().__init__(daemon=True)
        self.server, self.due = server, due
        self.stopped = threading.Event()

    def run(self):
        while not self.due():
            time.sleep(0.005)
        self.server.stop()
        self.stopped.set()
        time.sleep(DOWN_S)
        self.server.start()


def objects(folder: Path) -> int:
    return sum(1 for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0


def digests(folder: Path) -> dict[str, str]:
    return {f.relative_to(folder).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def blob_repo(root: Path, endpoint: str) -> Path:
    """A git + DVC project tracking N_FILES seeded random files, with the S3 server as its default remote."""
    repo = root / "origin"
    rng = np.random.default_rng(0)
    (repo / DATA).mkdir(parents=True)
    for i in range(N_FILES):
        (repo / DATA / f"{i:04d}.bin").write_bytes(rng.bytes(FILE_SIZE))
    run(["git", "init", "-q"], repo)
    run([DVC, "init", "-q"], repo)
    run([DVC, "add", "-q", DATA], repo)
    run([DVC, "remote", "add", "-d", "s3remote", "s3://bucket/cache"], repo)
    run([DVC, "remote", "modify", "s3remote", "endpointurl", endpoint], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "blobs"], repo)
    s3_credentials(repo)
    return repo


def with_outage(server, due, job) -> None:
    """Run `job` while an Outage waits for `due`."""
    outage = Outage(server, due)
    outage.start()
    job()
    outage.join(timeout=60)
    assert outage.stopped.is_set(), "the job ended before the outage"


@pytest.mark.slow  # a few seconds of outage per job, and DVC's start-up
def test_dvc_push_and_pull_survive_a_server_restart(s3_server, tmp_path):
    repo = blob_repo(tmp_path, s3_server.url)
    cache = s3_server.root / "bucket" / "cache"
    seen = {}

    def due(folder: Path, name: str):
        def check():  # a quarter of the objects across: mid-job
            seen[name] = objects(folder)
            return seen[name] >= N_FILES // 4
        return check

    with_outage(s3_server, due(cache, "push"), lambda: run([DVC, "push", "-j", "2"], repo, **RETRIES))
    assert N_FILES // 4 <= seen["push"] < N_FILES  # the server died with the push half done
    assert objects(cache / "files" / "md5") == N_FILES + 1  # every file, and the directory's listing

    pulled = clone(repo, tmp_path / "clone")
    shutil.copy(repo / ".dvc" / "config.local", pulled / ".dvc")
    with_outage(s3_server, due(pulled / ".dvc" / "cache", "pull"),
                lambda: run([DVC, "pull", "-j", "2"], pulled, **RETRIES))
    assert N_FILES // 4 <= seen["pull"] < N_FILES + 1
    assert digests(pulled / DATA) == digests(repo / DATA) and len(digests(repo / DATA)) == N_FILES


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_shard_stream_survives_a_server_restart(s3_server, toy_dataset):
    shards = toy_shards(toy_dataset)
    shutil.copytree(shards, s3_server.root / "bucket" / "shards")
    spec, n, cut = ExampleSpec(16, "fingers11", 1.5), 12, 4
    local = list(islice(PairStream(shards, "train", spec, batch_size=3, seed=7), n))
    remote = iter(PairStream("s3://bucket/shards", "train", spec, batch_size=3, seed=7))
    streamed = list(islice(remote, cut))
    stopped = threading.Event()
    outage = Outage(s3_server, stopped.is_set)
    outage.start()
    stopped.set()
    outage.stopped.wait(10)
    streamed += list(islice(remote, n - cut))  # the next shard opens against a dead server
    outage.join(timeout=60)
    assert len(streamed) == n and all(same(a, b) for a, b in zip(streamed, local, strict=True))
