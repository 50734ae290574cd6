"""DVC stage ingest@<dataset>: native dataset -> data/ingest/<dataset> (manifest, images, rejects)."""
import sys
from pathlib import Path

from handloom.datasets.ingest import ingest
from handloom.params import stage_params


def main(dataset: str) -> None:
    params = stage_params()
    out = Path("data/ingest") / dataset
    try:
        writer = ingest(dataset, getattr(params.ingest, dataset), out)
    except FileNotFoundError as e:  # a source or annotation file params.yaml points at is not there
        print(f"error: ingest@{dataset}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"ingest@{dataset}: {writer.n_samples} samples, {len(writer.rejects)} rejects -> {out}")


if __name__ == "__main__":
    main(sys.argv[1])
