"""Params that read the shared hand_samples folder (a few real files per dataset, native layout) for tests and docs."""
from __future__ import annotations

import tempfile
from pathlib import Path

from handloom.datasets.ingest import ingest
from handloom.datasets.summary import render_overlays, write_summary
from handloom.params import (
    COCOWholeBodyParams,
    DatasetParams,
    FreiHANDParams,
    HaGRIDParams,
    InterHandParams,
    OneHand10KParams,
    PanopticParams,
    RHDParams,
)

# ../shared beside the repository (CI clones it that way); never copied into the repository.
DEFAULT_SAMPLES_DIR = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "hand_samples"


def sample_params(samples_dir: Path = DEFAULT_SAMPLES_DIR) -> dict[str, DatasetParams]:
    """One params object per adapter: the samples keep each dataset's annotation form under shorter file names."""
    s = Path(samples_dir)
    return {
        "freihand": FreiHANDParams(source=str(s / "freihand"), annotations=("test_freihand.json",)),
        "interhand": InterHandParams(source=str(s / "interhand2.6m"), images_dir="",
                                     annotations=("test_interhand2.6m_data.json",)),
        "hagrid": HaGRIDParams(source=str(s / "hagrid"), annotations=("annotations/test",)),
        "onehand10k": OneHand10KParams(source=str(s / "onehand10k"), annotations=("test_onehand10k.json",)),
        "rhd": RHDParams(source=str(s / "rhd"), annotations=("test_rhd.json",)),
        "panoptic": PanopticParams(source=str(s / "cmu_panoptic_handdb"), annotations=("test_panoptic.json",)),
        "coco_wholebody": COCOWholeBodyParams(source=str(s / "coco_wholebody"), images_dir="",
                                              annotations=("test_coco_wholebody.json",)),
    }


def render_docs(out_root: Path, samples_dir: Path = DEFAULT_SAMPLES_DIR, table: Path = Path("reports/datasets.md"),
                overlays: Path = Path("docs/datasets/overlays.png")) -> None:
    """Ingest every sample folder under out_root, then write the counts table and the joint-order overlays."""
    dirs = []
    for name, params in sample_params(samples_dir).items():
        ingest(name, params, out_root / name)
        dirs.append(out_root / name)
    write_summary(dirs, table, "Hands ingested per dataset from shared/data/hand_samples")
    render_overlays(dirs, overlays)


if __name__ == "__main__":  # python -m handloom.datasets.samples: rebuild reports/datasets.md and the overlays
    with tempfile.TemporaryDirectory() as tmp:
        render_docs(Path(tmp))
