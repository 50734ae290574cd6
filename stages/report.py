"""DVC stage report: metrics, samples and generate examples -> reports/report.md and reports/figures/*.png."""
from pathlib import Path

from handloom.errors import run_entry_point
from handloom.logs import quiet_third_party
from handloom.params import stage_args, stage_params


def main() -> None:
    quiet_third_party()  # before the libraries print: a log shows the stage's own lines
    from handloom.report.build import build_report  # here, not above: --help must not wait for torch

    params = stage_params()
    build_report(Path("reports"), Path("data/eval"), Path("data/shards"), params.report, Path("data/models"), params)
    print("report: reports/report.md")


if __name__ == "__main__":
    stage_args(__doc__)
    run_entry_point(main)
