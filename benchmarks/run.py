"""`make bench`: run every ratio benchmark in one go, then write benchmarks/results.json's table into
benchmarks/README.md. Ratios are measured side by side inside each benchmark; absolute times mean little."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (script, whether it has a --gpu mode, its arguments) in the order they run; each merges its own key into
# results.json. The arguments keep the whole run under 15 minutes on 2 cores; run a script alone for more rounds.
BENCHMARKS = [
    ("dvc_noop.py", False, []),
    ("annotate.py", False, []),
    ("loader.py", False, ["--rounds", "3"]),
    ("train_step.py", True, []),
    ("bench_prefect.py", False, ["--rounds", "1", "--dask-rounds", "2"]),
]
HEADLINE = ("ratio", "growth", "speedup", "overhead", "noop_repro_s", "per_s", "mfu")
TABLE_START, TABLE_END = "<!-- results:start -->", "<!-- results:end -->"


def headline_rows(results: dict) -> list[tuple[str, str, object]]:
    """(benchmark, figure, value) for every scalar whose name says it is a headline figure."""
    rows = []
    for bench, figures in sorted(results.items()):
        for name, value in sorted(figures.items()):
            if isinstance(value, (int, float, bool)) and any(h in name for h in HEADLINE):
                rows.append((bench, name, value))
    return rows


def write_table(results: dict) -> None:
    table = ["| benchmark | figure | value |", "|---|---|---|"]
    table += [f"| {b} | {n} | {v} |" for b, n, v in headline_rows(results)]
    readme = HERE / "README.md"
    text = readme.read_text() if readme.exists() else f"# Benchmarks\n\n{TABLE_START}\n{TABLE_END}\n"
    head, rest = text.split(TABLE_START, 1)
    tail = rest.split(TABLE_END, 1)[1]
    readme.write_text(head + TABLE_START + "\n" + "\n".join(table) + "\n" + TABLE_END + tail)


def main(args: list[str]) -> int:
    """`--gpu` adds the GPU figures (MFU) to the benchmarks that have them, after their CPU run."""
    failed = []
    runs = [(s, a) for s, _, a in BENCHMARKS] + [(s, ["--gpu"]) for s, gpu, _ in BENCHMARKS if gpu and "--gpu" in args]
    for script, extra in runs:
        start = time.perf_counter()
        print(f"== {script} {' '.join(extra)}", flush=True)
        if subprocess.run([sys.executable, str(HERE / script), *extra]).returncode:
            failed.append(script)
        print(f"== {script}: {time.perf_counter() - start:.0f} s", flush=True)
    results = json.loads((HERE / "results.json").read_text())
    write_table(results)
    for bench, name, value in headline_rows(results):
        print(f"{bench:>14}  {name:<28} {value}")
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gpu", action="store_true", help="add the GPU figures (MFU) after the CPU run")
    raise SystemExit(main(["--gpu"] if parser.parse_args().gpu else []))
