"""DVC stage shard: every annotated dataset -> data/shards (WebDataset tars, index, pairs, stats)."""
from pathlib import Path

from handloom.params import stage_params
from handloom.shards.writer import write_shards


def main() -> None:
    params = stage_params()
    datasets = {name: (Path("data/ingest") / name, Path("data/annotations") / name)
                for name, p in params.ingest if p is not None}
    print(f"shard: {write_shards(datasets, Path('data/shards'), params.shard)}")


if __name__ == "__main__":
    main()
