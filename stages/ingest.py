"""DVC stage ingest@<dataset>: native dataset -> data/ingest/<dataset> (manifest, images, rejects)."""
import sys
from pathlib import Path

from handloom.cpu import pin_cpu_dispatch
from handloom.errors import run_entry_point
from handloom.logs import quiet_third_party
from handloom.params import stage_args, stage_params


def main(dataset: str) -> None:
    pin_cpu_dispatch()  # before numpy loads: the same bytes on every machine
    quiet_third_party()  # before the libraries print: a log shows the stage's own lines
    from handloom.datasets.ingest import ingest

    params = stage_params()
    out = Path("data/ingest") / dataset
    try:
        writer = ingest(dataset, getattr(params.ingest, dataset), out)
    except FileNotFoundError as e:  # a source or annotation file params.yaml points at is not there
        print(f"error: ingest@{dataset}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"ingest@{dataset}: {writer.n_samples} samples, {len(writer.rejects)} rejects -> {out}")


if __name__ == "__main__":
    args = stage_args(__doc__, ("dataset", "a key under `ingest:` in params.yaml, e.g. synthetic"))
    run_entry_point(main, args.dataset)
