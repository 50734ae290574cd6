"""CMU Panoptic HandDB (manual keypoints) through mmpose's COCO-style conversion: one file per hand, `_l`/`_r`."""
from __future__ import annotations

import re
from functools import partial
from pathlib import Path

from handloom.datasets.adapter import Spec, run_adapter
from handloom.datasets.coco_style import CocoStyle, read_coco_style
from handloom.datasets.store import DatasetWriter
from handloom.params import PanopticParams

LICENSE = "CMU Panoptic HandDB: no license stated; research use (Simon et al., CVPR 2017); images from MPII and NZSL"
SIDE_SUFFIX = re.compile(r"_([lr])$")  # the only handedness there is: `_l` is the subject's left hand


def side(annotation: dict, image: dict) -> str:
    m = SIDE_SUFFIX.search(Path(image["file_name"]).stem)
    if not m:
        raise KeyError("_l/_r suffix in file_name")
    return {"l": "left", "r": "right"}[m[1]]


STYLE = CocoStyle(side=side, picture=lambda image: SIDE_SUFFIX.sub("", Path(image["file_name"]).stem))
SPEC = Spec("panoptic", LICENSE, partial(read_coco_style, STYLE))


def ingest_panoptic(p: PanopticParams, out_dir: Path) -> DatasetWriter:
    return run_adapter(SPEC, p, out_dir)
