"""DVC stage annotate@<dataset>: MediaPipe keypoints, masks and captions -> data/annotations/<dataset>."""
from pathlib import Path

from handloom.cpu import pin_cpu_dispatch
from handloom.errors import run_entry_point
from handloom.logs import quiet_third_party
from handloom.params import stage_args, stage_params


def main(dataset: str) -> None:
    pin_cpu_dispatch()  # before numpy / OpenCV load (MediaPipe's own TFLite kernels are not pinned: see README)
    quiet_third_party()  # before the libraries print: a log shows the stage's own lines
    from handloom.annotate.pipeline import annotate_dataset
    from handloom.io import remove_torn_writes, write_json

    params = stage_params()
    stats = annotate_dataset(Path("data/ingest") / dataset, Path("data/annotations") / dataset, params.annotate)
    metrics = Path("reports/data") / f"{dataset}.json"
    remove_torn_writes(metrics)
    write_json(metrics, stats)
    print(f"annotate@{dataset}: {stats}")


if __name__ == "__main__":
    args = stage_args(__doc__, ("dataset", "a key under `ingest:` in params.yaml, e.g. synthetic"))
    run_entry_point(main, args.dataset)
