"""DVC stage annotate@<dataset>: MediaPipe keypoints, masks and captions -> data/annotations/<dataset>."""
import sys
from pathlib import Path

from handloom.annotate.pipeline import annotate_dataset
from handloom.io import remove_torn_writes, write_json
from handloom.params import stage_params


def main(dataset: str) -> None:
    params = stage_params()
    stats = annotate_dataset(Path("data/ingest") / dataset, Path("data/annotations") / dataset, params.annotate)
    metrics = Path("reports/data") / f"{dataset}.json"
    remove_torn_writes(metrics)
    write_json(metrics, stats)
    print(f"annotate@{dataset}: {stats}")


if __name__ == "__main__":
    main(sys.argv[1])
