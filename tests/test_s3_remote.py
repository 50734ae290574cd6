"""Remote storage against real servers on loopback: a DVC remote on S3 (rclone) pushed, cloned and pulled, the
same cache pulled over plain HTTP, and a training batch streamed straight from `s3://` shard URLs."""
import os
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fsspec
import torch

from dvc_remote import DVC, SHARDS, clone, run, s3_credentials, tar_digests
from handloom import schema
from handloom.params import AugmentParams, ShardParams
from handloom.shards.reader import ExampleSpec, pair_dataset, shard_urls
from handloom.shards.remote import read_parquet
from handloom.shards.writer import write_shards


def origin_repo(root: Path, toy: Path) -> Path:
    """A git + DVC project whose shards (from the toy dataset) are tracked by DVC and pushed to S3."""
    repo = root / "origin"
    write_shards({"toy": (toy / "ingest" / "toy", toy / "annotations" / "toy")}, repo / SHARDS,
                 ShardParams(crop_size=64, max_samples=1))
    run(["git", "init", "-q"], repo)
    run([DVC, "init", "-q"], repo)
    run([DVC, "add", "-q", SHARDS], repo)
    run([DVC, "remote", "add", "-d", "s3remote", "s3://bucket/cache"], repo)
    run([DVC, "remote", "modify", "s3remote", "endpointurl", os.environ["AWS_ENDPOINT_URL"]], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "shards"], repo)
    s3_credentials(repo)
    run([DVC, "push", "-q"], repo)
    return repo


def serve_http(directory: Path) -> ThreadingHTTPServer:
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def first_batch(root: str) -> dict:
    index, pairs = (read_parquet(f"{root}/{name}") for name in (schema.INDEX_FILE, schema.PAIRS_FILE))
    spec = ExampleSpec(16, "heatmaps42", 1.5, augment=AugmentParams())
    dataset = pair_dataset(shard_urls(root, index, "train"), pairs[pairs.split == "train"], spec, batch_size=2,
                           seed=3, batches_per_epoch=1)
    return next(iter(dataset))


def test_dvc_push_clone_pull_over_s3_and_http_then_stream_from_s3(s3, toy_dataset, tmp_path):
    origin = origin_repo(tmp_path, toy_dataset)
    expected = tar_digests(origin / SHARDS)
    assert len(expected) == 3 and any((s3 / "cache" / "files" / "md5").rglob("*"))

    pulled = clone(origin, tmp_path / "clone")
    shutil.copy(origin / ".dvc" / "config.local", pulled / ".dvc")  # the user's own keys, never committed
    run([DVC, "pull", "-q"], pulled)
    assert tar_digests(pulled / SHARDS) == expected

    server = serve_http(s3)  # the bucket's cache, read-only over HTTP: DVC's http remote
    try:
        by_http = clone(origin, tmp_path / "http-clone")
        url = f"http://127.0.0.1:{server.server_address[1]}/cache"
        run([DVC, "remote", "add", "--local", "httpremote", url], by_http)
        run([DVC, "pull", "-q", "-r", "httpremote"], by_http)
        assert tar_digests(by_http / SHARDS) == expected
    finally:
        server.shutdown()

    fs = fsspec.filesystem("s3")
    fs.put(str(pulled / SHARDS) + "/", "bucket/shards/", recursive=True)
    assert sorted(Path(p).name for p in fs.glob("bucket/shards/*.tar")) == sorted(expected)
    remote, local = first_batch("s3://bucket/shards"), first_batch(str(pulled / SHARDS))
    assert set(remote) == set(schema.BATCH_KEYS) and remote["reference"].shape == (2, 3, 16, 16)
    assert all(torch.equal(remote[k], local[k]) for k in schema.BATCH_KEYS)  # the same bytes, the same batch
