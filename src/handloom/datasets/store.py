"""The on-disk form of one ingested dataset: manifest, image parts and rejects in one directory."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq

from handloom import schema
from handloom.datasets.splits import HASHED, assign_splits
from handloom.io import encode_jpeg, encode_png, read_table, remove_torn_writes, sha256, write_table
from handloom.schema import IMAGES_DIR, MANIFEST_FILE, REJECTS_FILE

IMAGES_PER_PART = 1000


@dataclass
class DatasetWriter:
    """Collects accepted samples and rejects, then writes them in key order in one go."""

    out_dir: Path
    dataset: str
    license: str
    source: str
    jpeg_quality: int = 95
    val_fraction: float = 0.0   # for samples added with a splits.hashed() placeholder split
    test_fraction: float = 0.0
    rows: list[dict] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)

    def add(self, key: schema.SampleKey, image: np.ndarray, keypoints: np.ndarray | None,
            bbox, metadata: dict, mask: np.ndarray | None = None) -> None:
        jpeg = encode_jpeg(image, self.jpeg_quality)
        h, w = image.shape[:2]
        self.rows.append(dict(
            key=str(key), dataset=self.dataset, split=key.split, sequence=key.sequence, frame=key.frame,
            camera=key.camera, image_sha256=sha256(jpeg), width=w, height=h,
            gt_keypoints=None if keypoints is None else np.asarray(keypoints, np.float32).ravel().tolist(),
            bbox=list(map(float, bbox)), metadata=json.dumps(metadata, sort_keys=True),
            license=self.license, source=self.source))
        self.images.append(dict(key=str(key), jpeg=jpeg, mask_png=None if mask is None else encode_png(mask)))

    def reject(self, key: str, reason: str, detail: str = "") -> None:
        self.rejects.append(dict(key=key, dataset=self.dataset, stage="ingest", reason=reason, detail=detail))

    def resolve_hashed_splits(self) -> None:
        """Give samples with a placeholder split (splits.hashed) theirs, by hash rank among this dataset's groups."""
        split = assign_splits({r["split"] for r in self.rows if r["split"].startswith(HASHED)}, self.val_fraction,
                              self.test_fraction)
        if not split:
            return

        def resolved(key: str) -> str:
            parts = key.split("/", 3)
            if len(parts) < 4 or parts[1] not in split:
                return key
            return "/".join((parts[0], split[parts[1]], *parts[2:]))

        for row in self.rows:
            row["key"] = resolved(row["key"])
            row["split"] = row["key"].split("/")[1]
        for image in self.images:
            image["key"] = resolved(image["key"])
        for reject in self.rejects:  # a duplicate key is named in its reject row
            reject["key"], reject["detail"] = resolved(reject["key"]), resolved(reject["detail"])

    def write(self) -> None:
        """Replace the directory's contents; rows are sorted so reruns give identical bytes."""
        remove_torn_writes(self.out_dir)
        self.resolve_hashed_splits()
        self.rows.sort(key=lambda r: r["key"])
        self.images.sort(key=lambda r: r["key"])
        self.rejects.sort(key=lambda r: (r["key"], r["reason"]))
        images_dir = self.out_dir / IMAGES_DIR
        shutil.rmtree(images_dir, ignore_errors=True)
        for i, start in enumerate(range(0, max(len(self.images), 1), IMAGES_PER_PART)):
            part = f"{IMAGES_DIR}/part-{i:05d}.parquet"
            chunk = self.images[start:start + IMAGES_PER_PART]
            for row in self.rows[start:start + IMAGES_PER_PART]:
                row["image_uri"] = f"{part}#{row['key']}"
            write_table(self.out_dir / part, schema.table_from_rows(chunk, schema.IMAGES))
        write_table(self.out_dir / REJECTS_FILE, schema.table_from_rows(self.rejects, schema.REJECTS))
        write_table(self.out_dir / MANIFEST_FILE, schema.table_from_rows(self.rows, schema.MANIFEST))


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


def keypoints_array(flat) -> np.ndarray | None:
    """A manifest keypoint cell back to 42x3 (None stays None)."""
    return None if flat is None else np.asarray(flat, np.float32).reshape(schema.NUM_KEYPOINTS, 3)
