"""RHD (Rendered Handpose, synthetic) through mmpose's COCO-style conversion: fingers listed tip -> base."""
from __future__ import annotations

from functools import partial
from pathlib import Path

from handloom.datasets.adapter import Spec, run_adapter, tip_to_base_order
from handloom.datasets.coco_style import CocoStyle, read_coco_style
from handloom.datasets.store import DatasetWriter
from handloom.params import RHDParams

LICENSE = "RHD: no license stated; research use (Zimmermann & Brox, ICCV 2017); check its page before redistributing"
# 0 wrist, then thumb tip..base, index tip..base, ... The file's own `categories` list claims base -> tip:
# it is wrong for these data (PROVENANCE.md), so the order is fixed here, not read from the file.
ORDER = tip_to_base_order(wrist=0, first=1)

STYLE = CocoStyle(
    order=ORDER,
    side=lambda annotation, image: annotation["hand_type"],
    extra=lambda image: {"cam_param": image["cam_param"]} if "cam_param" in image else {},
)
SPEC = Spec("rhd", LICENSE, partial(read_coco_style, STYLE))


def ingest_rhd(p: RHDParams, out_dir: Path) -> DatasetWriter:
    return run_adapter(SPEC, p, out_dir)
