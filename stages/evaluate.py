"""DVC stage evaluate: data/models + held-out pairs -> data/eval/samples.npz and reports/metrics.json."""
import sys
from pathlib import Path

from handloom.errors import run_entry_point
from handloom.io import remove_torn_writes, write_json
from handloom.logs import quiet_third_party
from handloom.params import stage_args, stage_params


def main() -> None:
    quiet_third_party()  # before the libraries print: a log shows the stage's own lines
    from handloom.evaluate.pipeline import NoHeldOutPairs, evaluate  # here, not above: --help must not wait for torch

    params = stage_params()
    try:
        result = evaluate(Path("data/models"), Path("data/shards"), Path("data/eval"), params.train, params.evaluate)
    except NoHeldOutPairs as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    remove_torn_writes("reports/metrics.json")
    write_json("reports/metrics.json", result)
    print(f"evaluate: psnr {result['psnr']} (untrained {result['untrained']['psnr']}), "
          f"hands detected {result['hands']['detection_rate']}")


if __name__ == "__main__":
    stage_args(__doc__)
    run_entry_point(main)
