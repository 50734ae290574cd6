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

from handloom.draw import markdown_table, save_png
from handloom.io import decode_image, write_bytes


class RevisionUnreadable(RuntimeError):
    """DVC could not read a revision: its numbers would all show as new, so the diff must not be written."""


def dvc_json(*args: str) -> dict:
    """`dvc <args> --json`; DVC only warns when it cannot read a revision (e.g. a remote in .dvc/config.local that
    the revision's own .dvc/config lacks) and reports its values as missing, so a warning here is an error."""
    out = subprocess.run([sys.executable, "-m", "dvc", *args, "--json"], capture_output=True, text=True)
    failed = [line for line in out.stderr.splitlines() if "failed to load" in line or line.startswith("ERROR")]
    if out.returncode or failed:
        detail = (failed or out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[0]
        raise RevisionUnreadable(f"`dvc {' '.join(args)}`: {detail.removeprefix('WARNING: ')}")
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
    from handloom.report.build import FIGURES  # here: the report stage imports torch, which --help should not wait for

    metrics = delta_rows(dvc_json("metrics", "diff", base))
    params = delta_rows(dvc_json("params", "diff", base))
    lines = [f"# Report diff: `{base}` → workspace", "", "## Metrics", "",
             markdown_table(metrics, ["file", "key", "old", "new", "change"]) if metrics else "No metric changed.",
             "", "## Params", "",
             markdown_table(params, ["file", "key", "old", "new"]) if params else "No param changed.", ""]
    for figure in sorted((reports_dir / FIGURES).glob("*.png")):
        old = base_figure(base, str(figure.relative_to(reports_dir.parent)))
        if old is None:  # copied beside the markdown: the folder alone (a CI artifact) shows every figure
            write_bytes(out_dir / figure.name, figure.read_bytes())
            lines += [f"## {figure.stem} (new)", "", f"![{figure.stem}]({figure.name})", ""]
            continue
        new = decode_image(figure.read_bytes())
        if old.shape == new.shape and np.array_equal(old, new):
            continue
        save_png(out_dir / f"{figure.stem}.png", side_by_side(old, new))
        lines += [f"## {figure.stem}: `{base}` (left) vs workspace (right)", "",
                  f"![{figure.stem}]({figure.stem}.png)", ""]
    out = out_dir / "report-diff.md"
    write_bytes(out, "\n".join(lines).encode())
    return out


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m handloom.report.diff BASE [OUT_DIR]  (make report-diff BASE=<rev>)\n"
              "Writes OUT_DIR/report-diff.md (default build/report-diff): metric and param deltas against the git "
              "revision BASE, and the figures that changed side by side.")
        return 0 if argv else 2
    try:
        print(report_diff(argv[0], Path("reports"), Path(argv[1] if len(argv) > 1 else "build/report-diff")))
    except RevisionUnreadable as e:
        print(f"error: cannot compare with {argv[0]}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
