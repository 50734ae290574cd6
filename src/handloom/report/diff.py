"""`make report-diff BASE=<rev>`: a markdown comparison of this workspace's run against another git revision.

Metric and param deltas come from `dvc metrics diff` / `dvc params diff`; figures are shown side by side,
the base's read with `git show`, so a pull request shows what changed without rerunning the base.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from handloom.io import decode_image, write_bytes
from handloom.report.build import FIGURES
from handloom.draw import markdown_table, save_png


def dvc_json(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "dvc", *args, "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout or "{}")


def delta_rows(diff: dict) -> list[dict]:
    """One row per changed value: file, key, old, new and the change."""
    rows = []
    for path, keys in sorted(diff.items()):
        for key, d in sorted(keys.items()):
            rows.append(dict(file=path, key=key, old=d.get("old"), new=d.get("new"), change=d.get("diff")))
    return rows


def base_figure(rev: str, path: str) -> np.ndarray | None:
    shown = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True)
    return decode_image(shown.stdout) if shown.returncode == 0 else None


def side_by_side(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    h = max(old.shape[0], new.shape[0])
    pad = [np.pad(im, ((0, h - im.shape[0]), (0, 0), (0, 0)), constant_values=255) for im in (old, new)]
    return np.concatenate([pad[0], np.full((h, 8, 3), 255, np.uint8), pad[1]], axis=1)


def report_diff(base: str, reports_dir: Path, out_dir: Path) -> Path:
    """Write out_dir/report-diff.md (+ side-by-side PNGs) comparing the workspace with `base`."""
    metrics = delta_rows(dvc_json("metrics", "diff", base))
    params = delta_rows(dvc_json("params", "diff", base))
    lines = [f"# Report diff: `{base}` → workspace", "", "## Metrics", "",
             markdown_table(metrics, ["file", "key", "old", "new", "change"]) if metrics else "No metric changed.",
             "", "## Params", "",
             markdown_table(params, ["file", "key", "old", "new"]) if params else "No param changed.", ""]
    for figure in sorted((reports_dir / FIGURES).glob("*.png")):
        old = base_figure(base, str(figure.relative_to(reports_dir.parent)))
        if old is None:
            lines += [f"## {figure.stem} (new)", "", f"![{figure.stem}]({figure.resolve()})", ""]
            continue
        new = decode_image(figure.read_bytes())
        if old.shape == new.shape and np.array_equal(old, new):
            continue
        save_png(out_dir / f"{figure.stem}.png", side_by_side(old, new))
        lines += [f"## {figure.stem}: `{base}` (left) vs workspace (right)", "", f"![{figure.stem}]({figure.stem}.png)", ""]
    out = out_dir / "report-diff.md"
    write_bytes(out, "\n".join(lines).encode())
    return out


if __name__ == "__main__":
    print(report_diff(sys.argv[1], Path("reports"), Path(sys.argv[2] if len(sys.argv) > 2 else "build/report-diff")))
