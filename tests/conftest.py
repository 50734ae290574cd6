"""Shared fixtures: small datasets in the unified schema, built in the test (no downloads)."""
import os

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


@pytest.fixture
def toy_dataset(tmp_path):
    """Two sequences x 2 frames x 2 cameras plus one single image, ingested and annotated."""
    rng = np.random.default_rng(0)
    size = 64
    writer = DatasetWriter(tmp_path / "ingest" / "toy", "toy", license="test", source="test")
    annotations = []
    specs = [("seqa", f, c) for f in range(2) for c in "01"] + [("seqb", f, c) for f in range(2) for c in "01"]
    specs += [("img7", 0, "0")]
    for seq, frame, cam in specs:
        key = schema.SampleKey("toy", "val" if seq == "seqb" else "train", seq, frame, cam)
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
    write_table(tmp_path / "annotations" / "toy" / "annotations.parquet",
                schema.table_from_rows(annotations, schema.ANNOTATIONS))
    return tmp_path
