"""Atomic, deterministic file writes, the image codecs every stage shares, and the one reader of images that come
from outside the pipeline (dataset files, the CLI's inputs)."""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import shutil
import struct
import tempfile
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps

from handloom.errors import UserError

Image.MAX_IMAGE_PIXELS = 200_000_000  # real photos stay far below; a decompression bomb does not


def umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~umask()  # what open() gives a new file


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it into place only if the block succeeds.

    A stage killed mid-write leaves the old file (or none), never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, FILE_MODE)  # mkstemp's 0600 would make every output private: open() modes instead
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_torn_writes(path: str | Path) -> None:
    """Delete the temp files atomic_path leaves behind when a kill stops it mid-write, so a rerun's output equals a
    clean run's. A directory: every one under it (its owner's call). A file: its own only, since other writers of
    a shared directory (reports/data/ under parallel annotate stages) may be mid-write."""
    path = Path(path)
    root, pattern = (path, "**/.*.tmp") if path.is_dir() else (path.parent, f".{path.name}.*.tmp")
    for tmp in root.glob(pattern):
        tmp.unlink(missing_ok=True)


def replace_dir(staging: str | Path, target: str | Path) -> None:
    """Put a finished `staging` folder where `target` is, as one set: a reader sees the old folder or the new one,
    never old files beside new ones. A kill between the two renames leaves no target (the stage reruns) and a
    `.<name>.old` that the next call removes."""
    staging, target = Path(staging), Path(target)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def staging_dir(target: str | Path) -> Path:
    """An empty folder beside `target` to build its next contents in (what a killed run left there is dropped)."""
    target = Path(target)
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(target.with_name(f".{target.name}.old"), ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def finite_or_null(obj):
    """obj with every NaN / ±inf float replaced by None: strict JSON has no such numbers (`dvc metrics diff`
    and most parsers refuse Python's bare NaN, and NaN != NaN would show an unchanged metric as changed)."""
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj


def write_json(path: str | Path, obj) -> None:
    """Strict JSON (non-finite numbers as null), sorted keys and a trailing newline, so reviewers diff values,
    not key order."""
    write_bytes(path, (json.dumps(finite_or_null(obj), indent=2, sort_keys=True, allow_nan=False) + "\n").encode())


def write_table(path: str | Path, table: pa.Table, compression: str = "zstd") -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression=compression)


ROWS_PER_GROUP = 1000  # rows per Parquet row group of a streamed table: what a reader or writer holds at once


class ParquetStream:
    """A Parquet file written as rows arrive, in row groups of exactly `group_rows` rows (the last shorter), so
    the same rows give the same bytes however they were batched, and at most one group waits in memory. A table
    of up to `group_rows` rows comes out byte for byte as write_table writes it. Renamed into place on close;
    an exception leaves no file."""

    def __init__(self, path: str | Path, schema: pa.Schema, group_rows: int = ROWS_PER_GROUP):
        self.path, self.schema, self.group_rows = Path(path), schema, group_rows
        self.pending: list[pa.Table] = []
        self.buffered = self.rows = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.fchmod(fd, FILE_MODE)
        os.close(fd)
        self.tmp = Path(tmp)
        self._writer = pq.ParquetWriter(self.tmp, schema, compression="zstd")

    def write(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.buffered += table.num_rows
        self.rows += table.num_rows
        while self.buffered >= self.group_rows:
            self._flush(self.group_rows)

    def write_rows(self, rows: list[dict]) -> None:
        if rows:
            self.write(pa.Table.from_pylist(rows, schema=self.schema))

    def _flush(self, n: int) -> None:
        table = pa.concat_tables(self.pending).combine_chunks()  # arrow's chunking must not reach the bytes
        self._writer.write_table(table.slice(0, n))
        rest = table.slice(n)
        self.pending, self.buffered = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> None:
        if self.buffered:
            self._flush(self.buffered)
        elif not self.rows:
            self._writer.write_table(self.schema.empty_table())  # as write_table writes an empty table
        self._writer.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._writer.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ParquetStream":
        return self

    def __exit__(self, kind, value, tb) -> None:
        self.close() if kind is None else self.abort()


def read_table(path: str | Path, schema: pa.Schema | None = None) -> pa.Table:
    return pq.read_table(path, schema=schema)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok, "JPEG encoding failed"
    return buf.tobytes()


def encode_png(image: np.ndarray) -> bytes:
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image)
    assert ok, "PNG encoding failed"
    return buf.tobytes()


def encode_npy(array: np.ndarray) -> bytes:
    """A float32 .npy file's bytes (keypoints in the cache and the shards)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, np.float32))
    return buffer.getvalue()


def decode_image(data: bytes, gray: bool = False) -> np.ndarray | None:
    """RGB (or gray) uint8 pixels, or None when the bytes are not a readable image."""
    if not data:
        return None
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR)
    if arr is None:
        return None
    return arr if gray else cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, body) of each chunk of a PNG, in file order; CRCs unchecked."""
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        yield kind, data[pos + 8:pos + 8 + length]
        pos += 12 + length


def decode_gray_png(data: bytes) -> np.ndarray | None:
    """A gray PNG's pixels, as decode_image(data, gray=True) reads them, ~3x faster for the masks OpenCV writes.

    Those are 8-bit gray with every row Sub-filtered (each byte stores its difference to its left
    neighbour): inflate, then undo the filter with row-wise prefix sums mod 256, read off OpenCV's integral
    image (vectorised; numpy's uint8 cumsum is not). Other PNGs (colour, 16-bit, interlaced, other row
    filters) and broken data go through decode_image.
    """
    if not data.startswith(PNG_SIGNATURE):
        return decode_image(data, gray=True)
    chunks = list(png_chunks(data))
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        return decode_image(data, gray=True)
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    try:
        raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    except zlib.error:
        return decode_image(data, gray=True)
    if (depth, color, interlace) != (8, 0, 0) or len(raw) != height * (width + 1):
        return decode_image(data, gray=True)
    rows = np.frombuffer(raw, np.uint8).reshape(height, width + 1)  # a filter-type byte, then the row
    sub = rows[:, 0] == 1
    if not np.all(sub | (rows[:, 0] == 0)):  # Up, Average, Paeth: each row needs the one above, decoded
        return decode_image(data, gray=True)
    if not sub.any():
        return rows[:, 1:].copy()
    integral = cv2.integral(rows[:, 1:], sdepth=cv2.CV_32S)  # (H+1, W+1) sums of the rectangles above-left
    prefix = (integral[1:, 1:] - integral[:-1, 1:]).astype(np.uint8)  # per-row prefix sums; the cast wraps
    return prefix if sub.all() else np.where(sub[:, None], prefix, rows[:, 1:])


def load_npy(data: bytes) -> np.ndarray:
    """np.load of in-memory .npy bytes (a writable array), with each distinct header parsed once: np.load parses
    it with ast.literal_eval every time, which costs more than reading a 42x3 array."""
    if data[:6] != b"\x93NUMPY" or data[6] not in (1, 2, 3):
        return np.load(io.BytesIO(data), allow_pickle=False)  # raises the usual error
    length_bytes = 2 if data[6] == 1 else 4
    start = 8 + length_bytes + int.from_bytes(data[8:8 + length_bytes], "little")
    shape, fortran, dtype = _npy_header(data[:start])
    if dtype.hasobject:
        return np.load(io.BytesIO(data), allow_pickle=False)
    array = np.frombuffer(data, dtype, count=math.prod(shape), offset=start)
    return array.reshape(shape, order="F" if fortran else "C").copy()


@lru_cache(maxsize=64)
def _npy_header(prefix: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    f = io.BytesIO(prefix)
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read(f)


# --- Images from outside the pipeline ------------------------------------------------------------------
# The policy (README "Bad input"): pixels are read as a viewer shows them, since that is what an annotator
# saw. EXIF orientation is applied; 16-bit channels keep their high byte (Pillow's own rule for 16-bit colour PNGs,
# applied to 16-bit gray too, which Pillow would clip to white); transparent pixels are composited over black, the
# colour crops pad with; floating-point and 32-bit pixels are refused. Truncated files are refused (PIL raises where
# OpenCV would return the image half grey without a word).
class ImageError(UserError, ValueError):
    """Bytes that are no image this project reads; the message says why."""


@dataclass(frozen=True)
class Picture:
    """An external image's RGB uint8 pixels in the displayed frame, and how they were stored."""

    pixels: np.ndarray                # (H, W, 3) uint8, EXIF orientation applied
    orientation: int = 1              # the EXIF Orientation tag applied (1: stored as displayed)
    stored_size: tuple[int, int] = (0, 0)  # (width, height) of the stored pixels, before the orientation
    alpha: bool = False               # an alpha channel was composited over black

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.shape[1], self.pixels.shape[0]

    def from_stored(self, xy) -> np.ndarray:
        """Points in stored-frame pixels -> the displayed frame's (pixel centres at integers, as augment.flip)."""
        xy = np.asarray(xy, np.float64)
        x, y = xy[..., 0], xy[..., 1]
        w, h = self.stored_size[0] - 1, self.stored_size[1] - 1
        moved = {1: (x, y), 2: (w - x, y), 3: (w - x, h - y), 4: (x, h - y),
                 5: (y, x), 6: (h - y, x), 7: (h - y, w - x), 8: (y, w - x)}[self.orientation]
        return np.stack(moved, axis=-1)


HIGH_BYTE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def read_picture(data: bytes) -> Picture:
    """Any image file's bytes -> Picture, under the policy above; ImageError says why one is refused."""
    if not data:
        raise ImageError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                stored = im.size
                orientation = _orientation(im)
                im = ImageOps.exif_transpose(im) if orientation != 1 else im
                pixels, alpha = _rgb(im)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ImageError(f"{type(e).__name__}: {e}") from None
    return Picture(pixels, orientation, stored, alpha)


def _orientation(im: Image.Image) -> int:
    value = im.getexif().get(0x0112, 1)  # Orientation
    return value if value in range(1, 9) else 1  # out-of-range tags are ignored, as viewers do


def _rgb(im: Image.Image) -> tuple[np.ndarray, bool]:
    """(RGB uint8 pixels, whether an alpha channel was composited)."""
    if im.mode == "F":
        raise ImageError("floating-point pixels (mode F): convert the file to 8 or 16 bits per channel")
    if im.mode in HIGH_BYTE_MODES:
        values = np.asarray(im)
        if values.min() < 0 or values.max() > 0xFFFF:
            raise ImageError(f"32-bit integer pixels (mode {im.mode}): convert the file to 8 or 16 bits")
        gray = (values.astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2), False
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if not has_alpha:
        return np.asarray(im.convert("RGB")), False
    rgba = np.asarray(im.convert("RGBA"), np.uint16)
    rgb = (rgba[..., :3] * rgba[..., 3:] + 127) // 255  # over black: transparent -> 0, opaque unchanged
    return rgb.astype(np.uint8), bool(np.any(rgba[..., 3] < 255))


def read_image_file(path: str | Path) -> Picture:
    """read_picture of a file; an unreadable file is an ImageError naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"{path}: {e.strerror or e}") from None
    try:
        return read_picture(data)
    except ImageError as e:
        raise ImageError(f"{path.name}: {e}") from None
