"""What a run prints: bars on a terminal, one plain line per step of progress in a log file (CI, a Prefect flow run,
`dvc repro > log`), and the notices of third-party libraries silenced where they start.

A bar that redraws itself is one endless line in a log file, so anything that is not a terminal gets lines
instead. Every stage script and the `handloom` command call `quiet_third_party()` first.
"""
from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from contextlib import contextmanager
from typing import Iterator

# Notices every run printed that say nothing about this project's run (a real warning still shows).
HARMLESS_WARNINGS = (
    ".*You defined a `validation_step` but have no `val_dataloader`",  # the train stage has no validation split
    ".*`isinstance\\(treespec, LeafSpec\\)` is deprecated",            # Lightning's own use of torch's pytree
    ".*does not have many workers",                                   # num_workers 0 is the CPU default
    ".*`torch.jit.script` is deprecated",                             # on importing diffusers / transformers
)
# Hugging Face libraries read their level once, from these, when first imported; a user's own setting wins.
# Their warnings at this level are notices (e.g. "install accelerate"); their errors still show.
HF_VERBOSITY = {"DIFFUSERS_VERBOSITY": "error", "TRANSFORMERS_VERBOSITY": "error"}
# Lightning's info lines: device summary, "Seed set to", a logger advert, "`Trainer.fit` stopped"; the train
# stage prints its own start and progress lines instead.
CHATTY_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                  "lightning.fabric.utilities.seed", "lightning.pytorch.accelerators.cuda")
LINE_SECONDS = 60  # at least one progress line a minute, whatever the share done


def interactive() -> bool:
    """A person watches a terminal, where a bar redraws in place; otherwise (file, pipe) each update is a line."""
    return sys.stderr.isatty()


def quiet_third_party() -> None:
    """Silence the Python-level notices above; MediaPipe's native ones go through native_stderr_silenced()."""
    for message in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name, level in HF_VERBOSITY.items():
        os.environ.setdefault(name, level)


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 pointed at /dev/null for the block: C++ libraries (MediaPipe's TFLite and absl) write their
    start-up notices straight to it, past Python's logging and any environment setting."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class ProgressLines:
    """tqdm's update / close / context-manager interface for logs: `desc: k/N unit (s)` at every tenth of `total`
    (every `every` items without a total), at least once a minute, and at the end."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", every: int | None = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.every = every or (max(1, -(-total // 10)) if total else 100)
        self.n = self.printed = 0
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n - self.printed >= self.every or time.monotonic() - self.last >= LINE_SECONDS:
            self.line()

    def line(self) -> None:
        self.printed, self.last = self.n, time.monotonic()
        of = f"/{self.total}" if self.total is not None else ""
        print(f"{self.desc}: {self.n}{of} {self.unit} ({self.last - self.start:.0f} s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.n != self.printed:
            self.line()

    def __enter__(self) -> "ProgressLines":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int | None = None, desc: str = "", unit: str = "it", **tqdm_options):
    """A tqdm bar on a terminal, ProgressLines in a log."""
    if interactive():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, **tqdm_options)
    return ProgressLines(total, desc, unit)


def track(items, desc: str = "", unit: str = "it", total: int | None = None) -> Iterator:
    """The items, counted by progress() as they are used."""
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    with progress(total, desc, unit) as bar:
        for item in items:
            yield item
            bar.update(1)


@contextmanager
def phase(stage: str, what: str) -> Iterator[None]:
    """`stage: what ...` before a step that runs for a while, `stage: what done (s)` after it."""
    print(f"{stage}: {what} ...", flush=True)
    start = time.monotonic()
    yield
    print(f"{stage}: {what} done ({time.monotonic() - start:.1f} s)", flush=True)
