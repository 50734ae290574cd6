"""Dataset sources: loopback HTTP downloads with resume and sha256, and extraction that refuses unsafe archives."""
import hashlib
import io
import os
import tarfile
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import evil_tar
from handloom.datasets import sources
from handloom.datasets.ingest import ingest
from handloom.datasets.sources import ChecksumError, SourceError, UnsafeArchiveError, resolve_source
from handloom.datasets.store import read_manifest
from handloom.params import OneHand10KParams

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "hand_samples"


class RangeHandler(SimpleHTTPRequestHandler):
    """Static files with `Range: bytes=N-` support (SimpleHTTPRequestHandler has none); logs every request."""

    requests: list = []  # (path, Range header) per GET, shared by the test through the class
    cut_first_at: int | None = None  # close the first response after this many bytes (a dropped connection)

    def do_GET(self):
        type(self).requests.append((self.path, self.headers.get("Range")))
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            return self.send_error(404)
        data = path.read_bytes()
        start = int(self.headers["Range"].split("=")[1].rstrip("-")) if self.headers.get("Range") else 0
        if start >= len(data) and start:
            return self.send_error(416)
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if type(self).cut_first_at is not None:
            body, type(self).cut_first_at = body[:type(self).cut_first_at], None
        self.wfile.write(body)

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server(tmp_path):
    """A ThreadingHTTPServer on 127.0.0.1 (port 0: any free one) serving tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()
    handler = type("Handler", (RangeHandler,), {"requests": [], "cut_first_at": None})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HANDLOOM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sources, "BACKOFF_S", 0.0)
    return tmp_path / "cache"


def sample_archive(path: Path) -> str:
    """OneHand10K's sample files as a tar.gz wrapped in one top folder, as downloads usually are; its sha256."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(SAMPLES / "onehand10k", arcname="onehand10k")
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Only the tests that pack real samples need ../shared; the archive-safety tests build their own archives.
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/data/hand_samples is not beside the repo")


@needs_samples
def test_ingest_by_url_with_sha256_then_rerun_does_no_work(tmp_path, server, cache):
    www, url, handler = server
    sha = sample_archive(www / "onehand10k.tar.gz")
    params = OneHand10KParams(source=f"{url}/onehand10k.tar.gz", sha256=sha, annotations=("test_onehand10k.json",))
    ingest("onehand10k", params, tmp_path / "out")
    manifest = read_manifest(tmp_path / "out")
    assert len(manifest) == 4 and set(manifest["source"]) == {params.source}
    assert len(handler.requests) == 1
    assert not (cache / sha / "archive").exists()  # the extracted tree is what the cache keeps
    ingest("onehand10k", params, tmp_path / "again")
    assert len(handler.requests) == 1  # cached: no request, no hashing, no extraction
    assert (tmp_path / "again/manifest.parquet").read_bytes() == (tmp_path / "out/manifest.parquet").read_bytes()


@needs_samples
def test_wrong_checksum_is_refused_and_nothing_is_kept(server, cache):
    www, url, _ = server
    sha = sample_archive(www / "onehand10k.tar.gz")
    wrong = "0" * 64
    with pytest.raises(ChecksumError, match=f"sha256 is {sha}, but params pin {wrong}"):
        resolve_source(f"{url}/onehand10k.tar.gz", wrong)
    assert not any((cache / wrong).iterdir())


@needs_samples
def test_download_resumes_from_a_partial_file_with_range(server, cache):
    www, url, handler = server
    sha = sample_archive(www / "onehand10k.tar.gz")
    data = (www / "onehand10k.tar.gz").read_bytes()
    (cache / sha).mkdir(parents=True)
    (cache / sha / "archive.part").write_bytes(data[:1000])
    root = resolve_source(f"{url}/onehand10k.tar.gz", sha)
    assert handler.requests == [("/onehand10k.tar.gz", "bytes=1000-")]
    assert root.name == "onehand10k" and (root / "test_onehand10k.json").is_file()


@needs_samples
def test_dropped_connection_is_resumed_by_the_next_try(server, cache):
    www, url, handler = server
    sha = sample_archive(www / "onehand10k.tar.gz")
    handler.cut_first_at = 5000
    resolve_source(f"{url}/onehand10k.tar.gz", sha)
    assert handler.requests == [("/onehand10k.tar.gz", None), ("/onehand10k.tar.gz", "bytes=5000-")]


def test_url_needs_a_checksum_and_missing_files_are_clear(server, cache):
    www, url, _ = server
    with pytest.raises(SourceError, match="needs `sha256`"):
        resolve_source(f"{url}/x.tar")
    with pytest.raises(SourceError, match="404"):
        resolve_source(f"{url}/missing.tar", "1" * 64)


def test_archive_with_a_dotdot_member_served_by_url_is_refused(tmp_path, server, cache):
    www, url, _ = server
    sha = evil_tar(www / "evil.tar", "data/../../escaped.txt")
    with pytest.raises(UnsafeArchiveError, match=r"member 'data/\.\./\.\./escaped\.txt' escapes the target folder"):
        resolve_source(f"{url}/evil.tar", sha)
    assert not list(tmp_path.rglob("escaped.txt")) and not (cache / sha / "tree").exists()


@pytest.mark.parametrize("name, kind, message", [
    ("/abs/escaped.txt", tarfile.REGTYPE, "escapes the target folder"),
    ("link", tarfile.SYMTYPE, "is a link"),
    ("hard", tarfile.LNKTYPE, "is a link"),
    ("dev", tarfile.CHRTYPE, "is a device or special file"),
    ("fifo", tarfile.FIFOTYPE, "is a device or special file"),
])
def test_unsafe_tar_members_are_refused(tmp_path, cache, name, kind, message):
    archive = tmp_path / "bad.tar"
    evil_tar(archive, name, kind)
    with pytest.raises(UnsafeArchiveError, match=message):
        resolve_source(str(archive))


def test_unsafe_zip_members_are_refused(tmp_path, cache):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        link = zipfile.ZipInfo("link")
        link.external_attr = 0o120777 << 16  # S_IFLNK: a symlink as zip tools store it
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="'link' is a link"):
        resolve_source(str(archive))
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../escaped.txt", "pwned")
    with pytest.raises(UnsafeArchiveError, match="escapes the target folder"):
        resolve_source(str(archive))


def test_archive_bomb_is_refused_on_declared_size(tmp_path, cache):
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # 8 MiB of zeros packs into a few KiB
        info = tarfile.TarInfo("zeros.bin")
        info.size = 8 << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    assert archive.stat().st_size < 64 << 10
    with pytest.raises(UnsafeArchiveError, match="declare 8388608 bytes, over the limit of 1048576"):
        resolve_source(str(archive), max_bytes=1 << 20)
    assert not (cache / hashlib.sha256(archive.read_bytes()).hexdigest() / "tree").exists()


@needs_samples
def test_a_corrupt_archive_is_a_clear_error(tmp_path, cache):
    archive = tmp_path / "cut.tar.gz"
    sample_archive(archive)
    archive.write_bytes(archive.read_bytes()[:5000])
    with pytest.raises(SourceError, match="cut.tar.gz: not a tar or zip archive|cut.tar.gz: corrupt archive"):
        resolve_source(str(archive))


@needs_samples
def test_local_sources(tmp_path, cache):
    assert resolve_source(str(SAMPLES / "rhd")) == SAMPLES / "rhd"
    with pytest.raises(SourceError, match="no such folder or archive"):
        resolve_source(str(tmp_path / "nothing"))
    with pytest.raises(SourceError, match="pins an archive"):
        resolve_source(str(SAMPLES / "rhd"), "2" * 64)
    archive = tmp_path / "onehand10k.tar.gz"
    sha = sample_archive(archive)
    root = resolve_source(str(archive), sha)
    assert (root / "9.jpg").read_bytes() == (SAMPLES / "onehand10k/9.jpg").read_bytes()
    assert archive.exists()  # the user's own archive is never removed
    with pytest.raises(ChecksumError):
        resolve_source(str(archive), "3" * 64)
    os.utime(archive)  # still cached by sha256, not by path or time
    assert resolve_source(str(archive), sha) == root


@needs_samples
def test_s3_url_downloads_resumes_and_verifies(s3, cache):
    sha = sample_archive(s3 / "onehand10k.tar.gz")
    data = (s3 / "onehand10k.tar.gz").read_bytes()
    (cache / sha).mkdir(parents=True)
    (cache / sha / "archive.part").write_bytes(data[:777])  # an earlier, interrupted download
    root = resolve_source("s3://bucket/onehand10k.tar.gz", sha)
    assert (root / "test_onehand10k.json").read_bytes() == (SAMPLES / "onehand10k/test_onehand10k.json").read_bytes()
    with pytest.raises(ChecksumError):
        resolve_source("s3://bucket/onehand10k.tar.gz", "4" * 64)
