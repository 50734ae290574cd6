"""FreiHAND through mmpose's COCO-style conversion: right hands, each pose shipped in four appearance versions."""
from __future__ import annotations

from functools import partial
from pathlib import Path

from handloom.datasets.adapter import Spec, run_adapter
from handloom.datasets.coco_style import CocoStyle, read_coco_style
from handloom.datasets.store import DatasetWriter
from handloom.params import FreiHANDParams

LICENSE = "FreiHAND terms of use: research only, no commercial use, cite Zimmermann et al. ICCV 2019"
# Sample i comes again as i + 32560 k (k = 1..3) with other backgrounds: same pose, same view. The four
# must share a split (else the test set leaks), but they are not views or frames, so each is its own sequence.
VERSIONS = 32560

STYLE = CocoStyle(
    side=lambda annotation, image: "right",  # annotated with the MANO right-hand model
    group=lambda image: f"{int(image['id']) % VERSIONS:08d}",
    own_split=False,  # mmpose's train/val/test files split the versions apart; FreiHAND's own is training/evaluation
    extra=lambda image: dict(pose_id=int(image["id"]) % VERSIONS, version=int(image["id"]) // VERSIONS),
)
SPEC = Spec("freihand", LICENSE, partial(read_coco_style, STYLE))


def ingest_freihand(p: FreiHANDParams, out_dir: Path) -> DatasetWriter:
    return run_adapter(SPEC, p, out_dir)
