"""DVC stage train: data/shards (+ data/latents) -> data/models/last.ckpt, persisted and resumed; DVCLive logs."""
from pathlib import Path

from handloom.errors import run_entry_point
from handloom.params import stage_args, stage_params
from handloom.train.fit import fit


def main() -> None:
    params = stage_params()
    # The sample grids sample as evaluate does, so they show what evaluate will score.
    fit(params.train, Path("data/shards"), Path("data/models"), Path("reports/train"), Path("data/latents"),
        sampling=params.evaluate.sampling())


if __name__ == "__main__":
    stage_args(__doc__)
    run_entry_point(main)
