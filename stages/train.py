"""DVC stage train: data/shards (+ data/latents) -> data/models/last.ckpt, persisted and resumed; DVCLive logs."""
from pathlib import Path

from handloom.errors import run_entry_point
from handloom.logs import quiet_third_party
from handloom.params import stage_args, stage_params


def main() -> None:
    quiet_third_party()  # before the libraries print: a log shows the stage's own lines
    from handloom.train.fit import fit  # here, not above: --help must not wait for torch

    params = stage_params()
    # The sample grids sample as evaluate does, so they show what evaluate will score.
    fit(params.train, Path("data/shards"), Path("data/models"), Path("reports/train"), Path("data/latents"),
        sampling=params.evaluate.sampling())


if __name__ == "__main__":
    stage_args(__doc__)
    run_entry_point(main)
