"""Turn a dataset `source` (local folder, local archive, or http(s)/s3 URL) into a verified local folder."""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from http.client import HTTPException
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.parse import urlsplit

from filelock import FileLock
from tqdm import tqdm

from handloom.errors import UserError

DEFAULT_CACHE = Path(".handloom-cache/downloads")  # gitignored; HANDLOOM_CACHE_DIR overrides it
CHUNK = 1 << 20
URL_SCHEMES = ("http", "https", "s3")
RETRIES = 3
BACKOFF_S = 1.0        # wait BACKOFF_S x try number before trying again
TREE = "tree"          # <cache>/<sha256>/tree: the extracted archive, present only once complete
ARCHIVE = "archive"    # <cache>/<sha256>/archive(.part): the download, removed after extraction
LOCK = ".lock"         # <cache>/<sha256>.lock: held while one process fetches and extracts


class SourceError(UserError, RuntimeError):
    """A dataset source cannot be used; the message names the source and the reason."""


class ChecksumError(SourceError):
    """The bytes do not have the sha256 that params.yaml pins."""


class UnsafeArchiveError(SourceError):
    """An archive member would escape the target folder, is a link or device, or the archive is too big."""


def cache_root() -> Path:
    return Path(os.environ.get("HANDLOOM_CACHE_DIR", DEFAULT_CACHE))


def resolve_source(source: str, sha256: str | None = None, *, cache_dir: str | Path | None = None,
                   max_bytes: int = 512 << 30) -> Path:
    """A local folder holding the dataset; archives are verified and extracted once into the cache."""
    cache = Path(cache_dir) if cache_dir is not None else cache_root()
    scheme = urlsplit(source).scheme
    if scheme in URL_SCHEMES:
        if not sha256:
            raise SourceError(f"{source}: a URL source needs `sha256` so the download can be verified")
        return _cached_tree(cache / sha256, lambda entry: _download(source, sha256, entry), max_bytes)
    if scheme not in ("", "file") and len(scheme) > 1:  # one letter is a Windows drive
        raise SourceError(f"{source}: unsupported URL scheme {scheme!r} (use a folder, http(s):// or s3://)")
    path = Path(source[len("file://"):] if scheme == "file" else source).expanduser()
    if path.is_dir():
        if sha256:
            raise SourceError(f"{source}: `sha256` pins an archive, but this source is a folder")
        return path
    if not path.is_file():
        raise SourceError(f"{source}: no such folder or archive")
    digest = sha256 or file_sha256(path)
    return _cached_tree(cache / digest, lambda entry: _verified(path, digest), max_bytes)


def _cached_tree(entry: Path, fetch, max_bytes: int) -> Path:
    """The extracted tree of `entry`; fetch and extract only when no complete tree is there. Stages resolving the
    same source at once (ingest@a and ingest@b from one archive) take turns: the second waits, then finds the tree."""
    tree = entry / TREE
    if not tree.is_dir():
        entry.mkdir(parents=True, exist_ok=True)
        with FileLock(entry.with_name(f"{entry.name}{LOCK}")):
            if not tree.is_dir():
                archive = fetch(entry)
                extract_archive(archive, tree, max_bytes)
                if archive.parent == entry:  # a download, not the user's own file: the tree is what we keep
                    archive.unlink()
    return single_top_folder(tree)


def single_top_folder(tree: Path) -> Path:
    """Archives often wrap everything in one folder (FreiHAND_pub_v2/...): step into it."""
    entries = list(tree.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else tree


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _verified(path: Path, sha256: str) -> Path:
    if (digest := file_sha256(path)) != sha256:
        raise ChecksumError(f"{path}: sha256 is {digest}, but params pin {sha256}")
    return path


# --- Download ----------------------------------------------------------------------------------
def _download(url: str, sha256: str, entry: Path) -> Path:
    """Fetch into `archive.part`, resuming what an earlier try left; verify, then rename to `archive`."""
    part, done = entry / f"{ARCHIVE}.part", entry / ARCHIVE
    if done.exists():
        return _verified(done, sha256)
    fetch = _fetch_http if urlsplit(url).scheme in ("http", "https") else _fetch_fsspec
    for attempt in range(1, RETRIES + 1):
        try:
            fetch(url, part)
            break
        except (OSError, HTTPException) as e:  # the partial file stays: the next try resumes from it
            if attempt == RETRIES or _permanent(e):
                raise SourceError(f"{url}: download failed after {attempt} tries: {e}") from e
            time.sleep(BACKOFF_S * attempt)
    digest = file_sha256(part)
    if digest != sha256:
        part.unlink()  # a wrong file must not be resumed from
        raise ChecksumError(f"{url}: sha256 is {digest}, but params pin {sha256}; the download was removed")
    part.rename(done)
    return done


def _permanent(e: Exception) -> bool:
    """Client errors (404, 403, ...) will not heal by retrying."""
    return isinstance(e, urllib.error.HTTPError) and 400 <= e.code < 500 and e.code != 408


def _fetch_http(url: str, part: Path) -> None:
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left past what we have: the checksum decides
            return
        raise
    with response:
        if response.status != 206:  # the server ignored Range: start over
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length else None
        _copy(response, part, offset, total, url)


def _fetch_fsspec(url: str, part: Path) -> None:
    import fsspec  # s3:// (through s3fs) and whatever else fsspec knows

    fs, path = fsspec.core.url_to_fs(url)
    offset = part.stat().st_size if part.exists() else 0
    total = fs.size(path)
    with fs.open(path, "rb") as f:
        f.seek(min(offset, total))
        _copy(f, part, offset, total, url)


def _copy(stream, part: Path, offset: int, total: int | None, url: str) -> None:
    with open(part, "ab" if offset else "wb") as out, \
            tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=Path(urlsplit(url).path).name,
                 disable=None) as bar:
        while chunk := stream.read(CHUNK):
            out.write(chunk)
            bar.update(len(chunk))
    if total is not None and part.stat().st_size < total:
        raise ConnectionError(f"connection closed at {part.stat().st_size} of {total} bytes")


# --- Safe extraction -------------------------------------------------------------------------------
def extract_archive(archive: Path, tree: Path, max_bytes: int) -> None:
    """Check every member first, then extract into a temporary folder renamed to `tree` when complete."""
    tmp = tree.with_name(f"{tree.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, tmp, max_bytes)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, tmp, max_bytes)
        else:
            raise SourceError(f"{archive}: not a tar or zip archive")
        tmp.rename(tree)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise SourceError(f"{archive}: corrupt archive: {type(e).__name__}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _member_path(root: Path, name: str, archive: Path) -> Path:
    """Where `name` lands under root; refuse absolute names and `..` (the classic tar/zip slip)."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or PureWindowsPath(name).drive or ".." in PurePosixPath(posix).parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} escapes the target folder; refusing to extract")
    return root / posix


def _check_layout(archive: Path, members: list[tuple[str, bool]]) -> None:
    """Refuse (name, is_dir) members that cannot all be extracted as written: a file named like a folder (`x/`,
    `x/.`), or one path that is a file in one member and a folder in another (`a`, then `a/b`)."""
    files, folders = set(), set()
    for name, is_dir in members:
        parts = PurePosixPath(name.replace("\\", "/")).parts  # `x/./` and `x//y` name `x` and `x/y`
        if not is_dir and (not parts or name.endswith(("/", "/.")) or name == "."):
            raise UnsafeArchiveError(f"{archive}: member {name!r} is a file with a folder's name; refusing to extract")
        (folders if is_dir else files).add(parts)
        folders.update(parts[:i] for i in range(1, len(parts)))
    if clash := sorted(files & folders):
        raise UnsafeArchiveError(f"{archive}: member {'/'.join(clash[0])!r} is both a file and a folder; "
                                 f"refusing to extract")


def _check_size(archive: Path, total: int, max_bytes: int) -> None:
    if total > max_bytes:
        raise UnsafeArchiveError(f"{archive}: members declare {total} bytes, over the limit of {max_bytes} "
                                 f"(raise max_archive_gb if this is expected)")


def _extract_tar(archive: Path, root: Path, max_bytes: int) -> None:
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for m in members:
            _member_path(root, m.name, archive)
            if m.issym() or m.islnk():
                raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a link; refusing to extract")
            if not (m.isfile() or m.isdir()):
                raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a device or special file; "
                                         f"refusing to extract")
        _check_layout(archive, [(m.name, m.isdir()) for m in members])
        _check_size(archive, sum(m.size for m in members if m.isfile()), max_bytes)
        for m in tqdm(members, desc=f"extract {archive.name}", unit="file", disable=None):
            _write_member(_member_path(root, m.name, archive), m.isdir(), lambda m=m: tar.extractfile(m))


def _extract_zip(archive: Path, root: Path, max_bytes: int) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _member_path(root, info.filename, archive)
            # Unix type bits, where the zip has them: DOS tools store none, and Python's writestr only 0o600.
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind == stat.S_IFLNK:
                raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a link; refusing to extract")
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a device or special file; "
                                         f"refusing to extract")
        _check_layout(archive, [(info.filename, info.is_dir()) for info in infos])
        # zipfile stops reading a member at its declared size, so the declared total bounds the output.
        _check_size(archive, sum(i.file_size for i in infos), max_bytes)
        for info in tqdm(infos, desc=f"extract {archive.name}", unit="file", disable=None):
            _write_member(_member_path(root, info.filename, archive), info.is_dir(),
                          lambda info=info: zf.open(info))


def _write_member(path: Path, is_dir: bool, open_member) -> None:
    """Plain files and folders only, with our own permissions (no owners, modes or times from the archive)."""
    if is_dir:
        path.mkdir(parents=True, exist_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_member() as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst, CHUNK)
