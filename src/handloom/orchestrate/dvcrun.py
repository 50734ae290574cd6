"""Run one DVC stage through DVC itself, so dvc.lock stays the truth and an up-to-date stage is skipped."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

TAIL_LINES = 20
# `--wait-for-lock`: DVC holds the repo lock only while it checks and commits a stage and releases
# it while the command runs, so stages in one workspace can run side by side if each waits its turn.
DVC = [sys.executable, "-m", "dvc", "--wait-for-lock"]
Log = Callable[[str], None]


@dataclass
class StageRun:
    stage: str
    status: str      # ran | skipped (up to date) | restored (outputs checked out of DVC's cache)
    seconds: float


class StageFailed(RuntimeError):
    """A stage exited non-zero or ran out of time; the message names it and carries its stderr tail."""

    def __init__(self, stage: str, reason: str, tail: str):
        super().__init__(f"stage {stage} {reason}; stderr tail:\n{tail}")
        self.stage, self.tail = stage, tail


# Dask's Nanny writes these into its *parent's* os.environ when it spawns a worker (distributed's
# `nanny.pre-spawn-environ`): after an annotate fan-out, every stage launched from the flow process would
# inherit OMP_NUM_THREADS=1 and train on one core. Stages get them as they were when the flow started.
NANNY_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")
ENV_AT_START = {k: os.environ.get(k) for k in NANNY_ENV}


def stage_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The stage commands' `python` is this interpreter's, whatever PATH the worker was started with."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", DVC_NO_ANALYTICS="1", **(extra or {}))
    for key, value in ENV_AT_START.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _kill_tree(proc: subprocess.Popen) -> None:
    """The stage command is DVC's child: stop both, not just DVC."""
    try:
        procs = [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        p.kill()


def _pump(stream, log: Log, tail: deque) -> None:
    for line in stream:
        line = line.rstrip("\n").rsplit("\r", 1)[-1]  # a progress bar's last frame, not all of them
        tail.append(line)
        log(line)


# `--wait-for-lock` does not cover DVC's per-output locks: while another `dvc repro` / `dvc exp run` runs a stage,
# any command touching that stage's outputs fails at once with one of these. A scheduled run waits its turn instead.
BUSY = ("is busy, it is being blocked by", "Unable to acquire lock")
BUSY_FIRST_WAIT_S, BUSY_MAX_WAIT_S = 1.0, 60.0


def run_dvc(root: str | Path, args: list[str], stage: str, timeout_s: float, log: Log = print,
            env: dict[str, str] | None = None) -> list[str]:
    """`dvc <args>` at the repo root, output streamed to `log`; returns the stdout tail, raises StageFailed.

    While another DVC process holds the outputs, retries with exponential backoff (1 s doubling to 60 s) until
    timeout_s is spent."""
    deadline, wait = time.monotonic() + timeout_s, BUSY_FIRST_WAIT_S
    while True:
        try:
            return _run_dvc_once(root, args, stage, max(deadline - time.monotonic(), 1.0), log, env)
        except StageFailed as e:
            if not any(b in e.tail for b in BUSY) or time.monotonic() + wait > deadline:
                raise
            log(f"{stage}: DVC is busy with another run; retrying in {wait:g} s")
            time.sleep(wait)
            wait = min(wait * 2, BUSY_MAX_WAIT_S)


def _run_dvc_once(root: str | Path, args: list[str], stage: str, timeout_s: float, log: Log,
                  env: dict[str, str] | None) -> list[str]:
    proc = subprocess.Popen([*DVC, *args], cwd=root, env=stage_env(env), text=True, errors="replace",
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = deque(maxlen=TAIL_LINES), deque(maxlen=TAIL_LINES)
    pumps = [threading.Thread(target=_pump, args=(stream, log, tail), daemon=True)
             for stream, tail in ((proc.stdout, out), (proc.stderr, err))]
    for t in pumps:
        t.start()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_tree(proc)
        raise StageFailed(stage, f"timed out after {timeout_s:g} s", "\n".join(err)) from None
    finally:
        for t in pumps:
            t.join()
    if proc.returncode:
        raise StageFailed(stage, f"failed (exit {proc.returncode})", "\n".join(err))
    return list(out)


def repro_stage(root: str | Path, stage: str, timeout_s: float, log: Log = print,
                env: dict[str, str] | None = None) -> StageRun:
    """`dvc repro --single-item <stage>`: upstream stages are the flow's business, not DVC's. `env`: added to the
    command's environment (the Dask scheduler of the chunked stages)."""
    start = time.perf_counter()
    out = "\n".join(run_dvc(root, ["repro", "--single-item", stage], stage, timeout_s, log, env))
    status = ("skipped" if "didn't change, skipping" in out else
              "restored" if "is cached - skipping run" in out else "ran")
    return StageRun(stage, status, round(time.perf_counter() - start, 3))


def stage_changes(root: str | Path, stage: str) -> list:
    """What `dvc status` finds changed since dvc.lock in the stage's deps, params, command or outputs."""
    out = subprocess.run([*DVC, "status", "--json", stage], cwd=root, env=stage_env(), capture_output=True, text=True,
                         check=False)
    if out.returncode:
        raise StageFailed(stage, "status failed", out.stderr.strip())
    return json.loads(out.stdout or "{}").get(stage, [])
