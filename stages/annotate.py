"""DVC stage annotate@<dataset>: MediaPipe keypoints, masks and captions -> data/annotations/<dataset>."""
import sys
from pathlib import Path

from handloom.annotate.pipeline import annotate_dataset
from handloom.io import write_json
from handloom.params import stage_params


def main(dataset: str) -> None:
    params = stage_params()
    stats = annotate_dataset(Path("data/ingest") / dataset, Path("data/annotations") / dataset, params.annotate)
    write_json(Path("reports/data") / f"{dataset}.json", stats)
    print(f"annotate@{dataset}: {stats}")


if __name__ == "__main__":
    main(sys.argv[1])
