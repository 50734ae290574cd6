"""DVC stage encode_latents: data/shards -> data/latents, the train split through train.vae_path once.

With train.vae_path null (pixel space, the default) it writes only data/latents/meta.json, without
importing torch, so the default pipeline pays nothing for it.
"""
from pathlib import Path

from handloom.errors import run_entry_point
from handloom.io import remove_torn_writes, write_json
from handloom.logs import quiet_third_party
from handloom.params import stage_args, stage_params

OUT = Path("data/latents")


def main() -> None:
    quiet_third_party()  # before the libraries print: a log shows the stage's own lines
    params = stage_params().train
    remove_torn_writes(OUT)  # what a killed run left half-written
    if params.vae_path is None:
        write_json(OUT / "meta.json", {"vae": None})
        return
    from handloom.train.latents import encode_latents

    encode_latents(Path("data/shards"), OUT, params)


if __name__ == "__main__":
    stage_args(__doc__)
    run_entry_point(main)
