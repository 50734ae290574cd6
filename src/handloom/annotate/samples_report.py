"""MediaPipe against each dataset's ground truth, on the shared hand samples and the synthetic default:
`python -m handloom.annotate.samples_report` rebuilds reports/annotation_samples.md and .json."""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from handloom.annotate.pipeline import annotate_dataset
from handloom.datasets.ingest import ingest
from handloom.datasets.samples import DEFAULT_SAMPLES_DIR, sample_params
from handloom.datasets.store import keypoints_array, read_manifest
from handloom.draw import markdown_table
from handloom.io import write_bytes, write_json
from handloom.params import AnnotateParams, load_params
from handloom.schema import HANDS, hand_present

COLUMNS = ["dataset", "images", "gt_hands", "hands_detected", "detection_rate", "pck_0_1", "pck_0_2",
           "default_rejects"]


def dataset_report(ingest_dir: Path, work_dir: Path, cache_dir: Path) -> dict:
    """Agreement with every filter off (what MediaPipe does on the whole dataset), and what the default
    filters would reject; the second run finds every keypoint in the cache."""
    unfiltered = AnnotateParams(min_mp_score=0, max_gt_disagreement=1, min_mask_area=0, cache_dir=str(cache_dir))
    stats = annotate_dataset(ingest_dir, work_dir / "unfiltered", unfiltered)
    default = annotate_dataset(ingest_dir, work_dir / "default", AnnotateParams(cache_dir=str(cache_dir)))
    gt = [k for k in map(keypoints_array, read_manifest(ingest_dir).gt_keypoints) if k is not None]
    return {c: stats.get(c) for c in COLUMNS[1:-1]} | dict(
        gt_hands=sum(hand_present(k, h) for k in gt for h in HANDS),
        default_rejects=", ".join(f"{n} {reason}" for reason, n in default["rejects"].items()) or "-")


def samples_report(out: Path, samples_dir: Path = DEFAULT_SAMPLES_DIR, synthetic: Path | None = None) -> dict:
    """Ingest each sample folder through its adapter into a temp dir, annotate it, write out.md and out.json.
    `synthetic`: an ingested synthetic dataset (data/ingest/synthetic); None renders params.yaml's."""
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if synthetic is None:
            synthetic = tmp / "ingest" / "synthetic"
            ingest("synthetic", load_params().ingest.synthetic, synthetic)
        dirs = {"synthetic": synthetic}
        for name, params in sample_params(samples_dir).items():
            dirs[name] = tmp / "ingest" / name
            ingest(name, params, dirs[name])
        for name, ingest_dir in dirs.items():
            report[name] = dataset_report(ingest_dir, tmp / "annotate" / name, tmp / "cache")
    write_json(out.with_suffix(".json"), report)
    write_bytes(out.with_suffix(".md"), render(report, samples_dir).encode())
    return report


def render(report: dict, samples_dir: Path) -> str:
    rows = [dict(dataset=name, **stats) for name, stats in report.items()]
    return "\n".join([
        "# MediaPipe against ground truth per dataset",
        "",
        f"Synthetic: the default of params.yaml (`ingest.synthetic`). The others: `{samples_dir.name}` (a few real "
        "files per dataset, ../shared/data), ingested through each dataset's adapter. MediaPipe Hands 0.10.21, static "
        "image mode, two hands, min detection confidence 0.1. `detection_rate`: ground-truth hands MediaPipe finds in "
        "the same handedness slot (where the dataset does not say which hand is which, either slot); `pck_0_1` / "
        "`pck_0_2`: joints seen in both within 0.1 / 0.2 of the ground-truth hand box's longer side. HaGRID has boxes "
        "only: no agreement to measure. `default_rejects`: what params.yaml's quality filters would set aside. "
        "Rebuild with `python -m handloom.annotate.samples_report`.",
        "",
        markdown_table(rows, COLUMNS),
        "",
    ])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("reports/annotation_samples.md"))
    parser.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES_DIR)
    parser.add_argument("--synthetic", type=Path, help="an ingested synthetic dataset, e.g. data/ingest/synthetic")
    args = parser.parse_args()
    print(samples_report(args.out, args.samples, args.synthetic))
