"""`make report-diff`: metric and param deltas from real DVC against a git revision, figures side by side."""
import os
import subprocess
import sys

import numpy as np

from handloom.draw import save_png
from handloom.io import decode_image, write_json
from handloom.report.diff import report_diff


def git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def write_run(repo, psnr: float, steps: int, shade: int) -> None:
    (repo / "params.yaml").write_text(f"train:\n  max_steps: {steps}\n")
    (repo / "reports").mkdir(exist_ok=True)
    write_json(repo / "reports" / "metrics.json", {"psnr": psnr, "hands": {"mpjpe": float("nan")}})  # none detected
    save_png(repo / "reports" / "figures" / "generated.png", np.full((8, 8, 3), shade, np.uint8))


def test_report_diff_shows_metric_and_param_deltas_and_both_figures(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "t@example.com")
    git(repo, "config", "user.name", "t")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    (repo / "dvc.yaml").write_text("stages:\n  evaluate:\n    cmd: 'true'\n    params: [train]\n"
                                   "    metrics:\n      - reports/metrics.json:\n          cache: false\n")
    write_run(repo, psnr=8.0, steps=250, shade=10)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base run")
    write_run(repo, psnr=9.5, steps=400, shade=200)  # a params change and its new results

    monkeypatch.chdir(repo)
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    out = report_diff("HEAD", repo / "reports", repo / "build")
    text = out.read_text()
    assert "| reports/metrics.json | psnr | 8 | 9.5 | 1.5 |" in text
    assert "| params.yaml | train.max_steps | 250 | 400 |" in text
    assert "mpjpe" not in text  # null in both runs: unchanged (a bare NaN != NaN would show as changed)
    grid = decode_image((repo / "build" / "generated.png").read_bytes())
    assert grid.shape == (8, 8 + 8 + 8, 3)  # base | gap | workspace
    assert grid[0, 0, 0] == 10 and grid[0, -1, 0] == 200
    # A figure the base lacks is copied beside the markdown: the folder alone (a CI artifact) shows every figure.
    save_png(repo / "reports" / "figures" / "loss.png", np.full((4, 4, 3), 7, np.uint8))
    text = report_diff("HEAD", repo / "reports", repo / "build").read_text()
    assert "![loss](loss.png)" in text and "![generated](generated.png)" in text and "](/" not in text
    assert (repo / "build" / "loss.png").read_bytes() == (repo / "reports" / "figures" / "loss.png").read_bytes()
