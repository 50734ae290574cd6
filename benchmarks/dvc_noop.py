"""No-op `dvc repro` time with 1,000 shards: the pipeline must report "up to date" in under 2 s.

Builds a throwaway DVC repo whose stage writes 1,000 small tar shards into one output directory (as the
shard stage does), reproduces it once, then times repeated no-op `dvc repro` runs.
Writes benchmarks/results.json["dvc_noop"].
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from record import record  # noqa: E402

N_SHARDS = 1000
STAGE = f"""\
import io, os, tarfile
os.makedirs("shards", exist_ok=True)
for i in range({N_SHARDS}):
    with tarfile.open(f"shards/synthetic-train-{{i:05d}}.tar", "w") as tar:
        data = os.urandom(4096)
        info = tarfile.TarInfo(f"sample{{i}}.jpg"); info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
"""


def run(cmd: list[str], cwd: Path) -> str:
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout


def time_noop(repo: Path, repeats: int = 5) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = run([sys.executable, "-m", "dvc", "repro"], repo)
        times.append(time.perf_counter() - start)
        assert "up to date" in out or "didn't change" in out, out
    return times


def shard_repo(tmp: Path) -> Path:
    repo = tmp / "repo"
    repo.mkdir()
    run(["git", "init", "-q"], repo)
    run([sys.executable, "-m", "dvc", "init", "-q"], repo)
    run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], repo)
    (repo / "make_shards.py").write_text(STAGE)
    (repo / "dvc.yaml").write_text("stages:\n  shard:\n    cmd: python make_shards.py\n    deps: [make_shards.py]\n"
                                   "    outs: [shards]\n")
    run([sys.executable, "-m", "dvc", "repro", "-q"], repo)
    return repo


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        times = time_noop(shard_repo(Path(tmp)))
    result = dict(command="python benchmarks/dvc_noop.py", shards=N_SHARDS,
                  noop_repro_s=round(statistics.median(times), 3),
                  runs_s=[round(t, 3) for t in times], under_2s=statistics.median(times) < 2.0)
    record("dvc_noop", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    import argparse

    argparse.ArgumentParser(description=__doc__).parse_args()  # --help, and nothing else
    main()
