"""Content-addressed cache of annotations: image sha256 + backend + its params -> one file, written atomically."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from handloom.io import write_bytes


def params_hash(**params) -> str:
    """A short, order-independent digest of everything besides the image that a result depends on."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def weights_fingerprint(path: str | Path) -> str:
    """Names, sizes and mtimes of a weights file or directory's files.

    Hashing the bytes would read gigabytes (LLaVA-1.5-7B is 14 GB) in every chunk's process; replacing the
    weights changes the mtime, and a copy elsewhere only costs a recomputation.
    """
    path = Path(path).resolve()
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    stat = tuple((str(f.relative_to(path) if path.is_dir() else f.name), f.stat().st_size, f.stat().st_mtime_ns)
                 for f in files)
    return params_hash(path=str(path), stat=stat)


@dataclass(frozen=True)
class AnnotationCache:
    """<root>/<backend>/<sha256[:2]>/<sha256>-<params hash>.<ext>; a killed writer leaves no partial file."""

    root: Path

    def path(self, backend: str, image_sha256: str, params: str, ext: str) -> Path:
        return Path(self.root) / backend / image_sha256[:2] / f"{image_sha256}-{params}.{ext}"

    def get(self, backend: str, image_sha256: str, params: str, ext: str) -> bytes | None:
        try:
            return self.path(backend, image_sha256, params, ext).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, backend: str, image_sha256: str, params: str, ext: str, data: bytes) -> None:
        write_bytes(self.path(backend, image_sha256, params, ext), data)
