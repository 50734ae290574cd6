"""OneHand10K through mmpose's COCO-style conversion: one hand per photo, handedness not annotated."""
from __future__ import annotations

from functools import partial
from pathlib import Path

from handloom.datasets.adapter import Spec, run_adapter
from handloom.datasets.coco_style import CocoStyle, read_coco_style
from handloom.datasets.store import DatasetWriter
from handloom.params import OneHand10KParams

LICENSE = "OneHand10K: no license stated; research use only (Wang et al., IEEE TCSVT 2018)"
# Left and right hands are mixed and unlabelled: keypoints go to the first block, handedness stays [] so the
# annotate stage takes MediaPipe's word for it.
SPEC = Spec("onehand10k", LICENSE, partial(read_coco_style, CocoStyle()))


def ingest_onehand10k(p: OneHand10KParams, out_dir: Path) -> DatasetWriter:
    return run_adapter(SPEC, p, out_dir)
