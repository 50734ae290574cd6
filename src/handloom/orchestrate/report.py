"""The markdown a pipeline run leaves as a Prefect artifact: stage outcomes, DVC metrics, the report."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from handloom.orchestrate.dvcrun import DVC, stage_env

MAX_REPORT_CHARS = 50_000  # the UI renders artifacts inline; a huge report belongs in the repo, not here


def read_metrics(root: str | Path) -> dict[str, dict]:
    """{metrics file: {dotted key: value}} as `dvc metrics show` reads the workspace; {} if it cannot."""
    out = subprocess.run([*DVC, "metrics", "show", "--json"], cwd=root, env=stage_env(), capture_output=True, text=True,
                         check=False)
    try:
        files = json.loads(out.stdout)[""]["data"]
    except (ValueError, KeyError, TypeError):
        return {}
    return {path: _flat(entry["data"]) for path, entry in sorted(files.items()) if "data" in entry}


def _flat(value, prefix: str = "") -> dict:
    if not isinstance(value, dict):
        return {prefix.rstrip("."): value}
    return {k: v for key, sub in value.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}


def stages_table(outcomes: dict[str, dict]) -> list[str]:
    lines = ["| stage | outcome | seconds |", "|---|---|---:|"]
    for stage, o in outcomes.items():
        outcome = o["status"] if o["status"] != "failed" else f"**failed**: {o['error'].splitlines()[0]}"
        lines.append(f"| `{stage}` | {outcome} | {o.get('seconds', '')} |")
    return lines


def dvc_metrics_lines(metrics: dict[str, dict]) -> list[str]:
    """`dvc metrics show` as markdown lines: one row per file and metric."""
    if not metrics:
        return ["_no metrics in the workspace_"]
    lines = ["| file | metric | value |", "|---|---|---:|"]
    lines += [f"| `{path}` | {key} | {value} |" for path, values in metrics.items() for key, value in values.items()]
    return lines


def run_markdown(title: str, outcomes: dict[str, dict], metrics: dict[str, dict], reports: list[Path]) -> str:
    parts = [f"# {title}", "", *stages_table(outcomes), "", "## Metrics", "", *dvc_metrics_lines(metrics)]
    for path in reports:
        if path.is_file():
            parts += ["", f"## {path.name}", "", path.read_text()[:MAX_REPORT_CHARS]]
    return "\n".join(parts) + "\n"
