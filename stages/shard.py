"""DVC stage shard: every annotated dataset -> data/shards (WebDataset tars, index, pairs, stats)."""
from pathlib import Path

from handloom.cpu import pin_cpu_dispatch
from handloom.errors import run_entry_point
from handloom.logs import quiet_third_party
from handloom.params import stage_args, stage_params


def main() -> None:
    pin_cpu_dispatch()  # before numpy / OpenCV load: the same crops and JPEGs on every machine
    quiet_third_party()  # before the libraries print: a log shows the stage's own lines
    from handloom.shards.writer import write_shards

    params = stage_params()
    datasets = {name: (Path("data/ingest") / name, Path("data/annotations") / name)
                for name, p in params.ingest if p is not None}
    print(f"shard: {write_shards(datasets, Path('data/shards'), params.shard)}")


if __name__ == "__main__":
    stage_args(__doc__)
    run_entry_point(main)
