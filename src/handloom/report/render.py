"""The report's training plots: DVCLive series read back and drawn to PNG offline."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # offline, headless: no display, no CDN
import matplotlib.pyplot as plt  # noqa: E402

from handloom.io import write_bytes  # noqa: E402


def read_dvclive_series(plots_dir: Path) -> dict[str, tuple[list[float], list[float]]]:
    """Every DVCLive .tsv under plots_dir as name -> (steps, values)."""
    series = {}
    for tsv in sorted(plots_dir.rglob("*.tsv")):
        with open(tsv) as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if rows:
            name = str(tsv.relative_to(plots_dir).with_suffix(""))
            value_col = [c for c in rows[0] if c not in ("step", "timestamp")][0]
            series[name] = ([float(r["step"]) for r in rows], [float(r[value_col]) for r in rows])
    return series


def plot_series(series: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, max(1, len(series)), figsize=(5 * max(1, len(series)), 3.2), squeeze=False)
    for ax, (name, (steps, values)) in zip(axes[0], series.items()):
        ax.plot(steps, values, lw=1.2)
        ax.set_title(name), ax.set_xlabel("step"), ax.grid(alpha=0.3)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100, metadata={"Software": None})  # no version stamp: same plot, same bytes
    plt.close(fig)
    write_bytes(path, png.getvalue())


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}
