"""DVCLive for the train stage: `dvc plots` reads the loss curve from its .tsv files, exactly once per step."""
from __future__ import annotations

import csv
from pathlib import Path

from dvclive.fabric import DVCLiveLogger as FabricDVCLiveLogger
from dvclive.lightning import DVCLiveLogger
from lightning.pytorch.utilities import rank_zero_only

from handloom.io import write_bytes


def rewind_live(log_dir: Path, step: int) -> None:
    """Keep the rows of batches 0..step-1 (a checkpoint at global step `step` holds those) and drop the rest.

    A run killed after its last checkpoint has logged batches the resumed run redoes; DVCLive's
    resume only appends, so the curve would hold them twice. Rows cut short by the kill go too, and
    so do metrics.json and params.yaml, summaries DVCLive writes in place (a kill can leave them
    empty, which its resume cannot read) and the resumed run writes afresh.
    """
    for tsv in sorted((log_dir / "plots" / "metrics").rglob("*.tsv")):
        header, *rows = tsv.read_text().splitlines(keepends=True)
        column = header.rstrip("\n").split("\t").index("step")
        kept = [r for r in rows if r.endswith("\n") and int(next(csv.reader([r], delimiter="\t"))[column]) < step]
        if len(kept) != len(rows):
            write_bytes(tsv, "".join([header, *kept]).encode())
    for summary in ("metrics.json", "params.yaml"):
        (log_dir / summary).unlink(missing_ok=True)


class LiveLogger(DVCLiveLogger):
    """DVCLive's Lightning logger, logging Lightning's step 0 as 0 and writing only what the pipeline reads.

    DVCLive reads step 0 as "no step" and logs the first two steps both at 1. Its sync walks
    inspect.stack() to decide whether to run, then re-parses every .tsv so far for DVC Studio even
    when Studio is off (this project is offline): a cost that grows with the run. The rows are
    written as they are logged; metrics.json (`dvc metrics`) is all a sync needs to refresh.
    """

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None, sync: bool | None = None) -> None:
        if step == 0:
            self.experiment.step = -1  # DVCLive adds 1 when the step is falsy
        FabricDVCLiveLogger.log_metrics(self, metrics, step, sync=False)
        self.experiment.make_summary()
