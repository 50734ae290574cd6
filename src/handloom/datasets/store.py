"""The on-disk form of one ingested dataset: manifest, image parts and rejects in one directory."""
from __future__ import annotations

import heapq
import json
from collections import namedtuple
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq

from handloom import schema
from handloom.io import (
    ParquetStream,
    encode_jpeg,
    encode_png,
    read_table,
    replace_dir,
    sha256,
    staging_dir,
    write_table,
)
from handloom.schema import IMAGES_DIR, MANIFEST_FILE, REJECTS_FILE

IMAGES_PER_PART = 1000


@dataclass
class EncodedSample:
    """One accepted sample, encoded where it was made (a chunk's worker), ready for the writer."""

    row: dict                  # its manifest row, less what the writer adds: image_uri, license, source
    jpeg: bytes
    mask_png: bytes | None
    records: tuple[str, ...]   # what a duplicate of its key rejects: the adapters' hand records, else the key

    @property
    def key(self) -> str:
        return self.row["key"]


def encode_sample(key: schema.SampleKey, image: np.ndarray, keypoints: np.ndarray | None, bbox, metadata: dict,
                  mask: np.ndarray | None = None, jpeg_quality: int = 95,
                  records: tuple[str, ...] | None = None) -> EncodedSample:
    jpeg = encode_jpeg(image, jpeg_quality)
    h, w = image.shape[:2]
    row = dict(key=str(key), dataset=key.dataset, split=key.split, sequence=key.sequence, frame=key.frame,
               camera=key.camera, image_sha256=sha256(jpeg), width=w, height=h,
               gt_keypoints=None if keypoints is None else np.asarray(keypoints, np.float32).ravel().tolist(),
               bbox=list(map(float, bbox)), metadata=json.dumps(metadata, sort_keys=True))
    return EncodedSample(row, jpeg, None if mask is None else encode_png(mask), records or (str(key),))


@dataclass
class DatasetWriter:
    """Writes one dataset's accepted samples in key order as they come, and its rejects at the end.

    Samples may be added in any order; those with keys up to the floor given to `advance` (no later sample
    sorts before it) are written at once, in image parts of IMAGES_PER_PART and manifest row groups, so memory
    holds a part, not the dataset. Without `advance` everything waits for `write`. A key added twice keeps its
    first sample; the second's records become `duplicate_key` rejects.
    """

    out_dir: Path
    dataset: str
    license: str
    source: str
    jpeg_quality: int = 95
    rejects: list[dict] = field(default_factory=list)  # small rows; only bad records make them grow
    n_samples: int = 0
    _waiting: list = field(default_factory=list)       # heap of (key, arrival, EncodedSample)
    _arrivals: int = 0
    _last_key: str | None = None
    _part: list[dict] = field(default_factory=list)
    _parts: int = 0
    _manifest: ParquetStream | None = None
    _staging: Path | None = None
    _rows: list[dict] = field(default_factory=list)    # manifest rows emitted since the last advance

    def add(self, key: schema.SampleKey, image: np.ndarray, keypoints: np.ndarray | None,
            bbox, metadata: dict, mask: np.ndarray | None = None) -> None:
        self.add_encoded(encode_sample(key, image, keypoints, bbox, metadata, mask, self.jpeg_quality))

    def add_encoded(self, sample: EncodedSample) -> None:
        heapq.heappush(self._waiting, (sample.key, self._arrivals, sample))
        self._arrivals += 1

    def reject(self, key: str, reason: str, detail: str = "") -> None:
        self.rejects.append(dict(key=printable(key), dataset=self.dataset, stage="ingest", reason=reason,
                                 detail=printable(detail)))

    def advance(self, floor: str | None = None) -> None:
        """Write every waiting sample whose key is <= floor (all of them for None)."""
        while self._waiting and (floor is None or self._waiting[0][0] <= floor):
            self._emit(heapq.heappop(self._waiting)[2])
        if self._rows:  # a chunk's rows in one Arrow table: one row at a time cost more than cropping them
            self._manifest.write_rows(self._rows)
            self._rows = []

    def _emit(self, sample: EncodedSample) -> None:
        if sample.key == self._last_key:
            for record in sample.records:
                self.reject(record, schema.Reject.DUPLICATE_KEY, sample.key)
            return
        if self._manifest is None:
            self._start()
        self._last_key = sample.key
        part = f"{IMAGES_DIR}/part-{self._parts:05d}.parquet"
        self._rows.append(dict(sample.row, image_uri=f"{part}#{sample.key}", license=self.license, source=self.source))
        self._part.append(dict(key=sample.key, jpeg=sample.jpeg, mask_png=sample.mask_png))
        self.n_samples += 1
        if len(self._part) == IMAGES_PER_PART:
            self._write_part()

    def _start(self) -> None:
        """Build the directory's next contents beside it (`.<name>.staging`): `write` swaps them in as one set,
        so a crash or a kill never leaves a manifest listing the parts of another run."""
        self._staging = staging_dir(self.out_dir)
        self._manifest = ParquetStream(self._staging / MANIFEST_FILE, schema.MANIFEST, IMAGES_PER_PART)

    def _write_part(self) -> None:
        # JPEG and PNG bytes do not compress (zstd saved 1.5 % of a part for most of the writer's time).
        write_table(self._staging / f"{IMAGES_DIR}/part-{self._parts:05d}.parquet",
                    schema.table_from_rows(self._part, schema.IMAGES), compression="none")
        self._part, self._parts = [], self._parts + 1

    def write(self) -> None:
        """Write what still waits, the last image part, the manifest and the rejects (sorted, so reruns give
        identical bytes), then put them in place of the directory's contents."""
        self.advance(None)
        if self._manifest is None:
            self._start()
        if self._part or not self._parts:
            self._write_part()
        self.rejects.sort(key=lambda r: (r["key"], r["reason"]))
        write_table(self._staging / REJECTS_FILE, schema.table_from_rows(self.rejects, schema.REJECTS))
        self._manifest.close()
        replace_dir(self._staging, self.out_dir)


def printable(text: str) -> str:
    """Text that Parquet can store: a non-UTF-8 file name (surrogates, from os.fsdecode) shown as escapes."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def read_manifest(dataset_dir: str | Path):
    return read_table(Path(dataset_dir) / MANIFEST_FILE).to_pandas()


def read_rejects(directory: str | Path):
    path = Path(directory) / REJECTS_FILE
    return (read_table(path) if path.exists() else schema.REJECTS.empty_table()).to_pandas()


def iter_images(dataset_dir: str | Path) -> Iterator[tuple[str, bytes, bytes | None]]:
    """(key, jpeg bytes, mask png bytes or None) in key order, one part file in memory at a time."""
    for part in sorted((Path(dataset_dir) / IMAGES_DIR).glob("part-*.parquet")):
        for batch in pq.ParquetFile(part).iter_batches(batch_size=256):
            yield from zip(*(batch.column(c).to_pylist() for c in ("key", "jpeg", "mask_png")))


Record = namedtuple("Record", schema.MANIFEST.names)  # one manifest row, as later stages read it


def manifest_rows(path: str | Path, names: tuple[str, ...] = Record._fields, kind=Record) -> Iterator:
    """A Parquet table's rows as `kind` tuples, in file order, a batch in memory at a time (missing columns: None)."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
        for row in batch.to_pylist():
            yield kind(*(row.get(name) for name in names))


def count_images(ingest_dir: str | Path) -> int:
    return pq.ParquetFile(Path(ingest_dir) / MANIFEST_FILE).metadata.num_rows


def manifest_images(ingest_dir: str | Path) -> Iterator[tuple[str, bytes, bytes | None, Record]]:
    """(key, jpeg, mask png, manifest row) in key order: the image parts and the manifest walked side by side."""
    images, last = iter_images(ingest_dir), ""
    for record in manifest_rows(Path(ingest_dir) / MANIFEST_FILE):
        key, jpeg, mask_png = next(images, (None, None, None))
        if key != record.key:
            raise ValueError(f"{ingest_dir}: the manifest and the image parts list different keys "
                             f"({record.key} vs {key})")
        if key <= last:
            raise ValueError(f"{ingest_dir}: the manifest is not in key order ({key} after {last})")
        last = key
        yield key, jpeg, mask_png, record
    if (extra := next(images, None)) is not None:
        raise ValueError(f"{ingest_dir}: image {extra[0]} is not in the manifest")


def keypoints_array(flat) -> np.ndarray | None:
    """A manifest keypoint cell back to 42x3 (None stays None)."""
    return None if flat is None else np.asarray(flat, np.float32).reshape(schema.NUM_KEYPOINTS, 3)
