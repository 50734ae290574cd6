"""`--help` on every command the README and dvc.yaml name: it prints usage, exits 0 and runs nothing (the old
flows/pipeline.py and benchmarks/run.py took `--help` for a run)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HANDLOOM = str(Path(sys.executable).parent / "handloom")  # pyproject's console script
PYTHON = sys.executable
COMMANDS = [
    [HANDLOOM], [HANDLOOM, "generate"], [HANDLOOM, "outpaint"],
    *([PYTHON, str(script)] for script in sorted((ROOT / "stages").glob("*.py"))),
    [PYTHON, str(ROOT / "flows" / "pipeline.py")],
    [PYTHON, "-m", "handloom.report.diff"], [PYTHON, "-m", "handloom.annotate.samples_report"],
    [PYTHON, "-m", "handloom.orchestrate.presets"],
    *([PYTHON, str(ROOT / "benchmarks" / name)] for name in
      ("run.py", "dvc_noop.py", "annotate.py", "loader.py", "train_step.py", "bench_prefect.py", "scale.py",
       "gpu_plan.py", "gpu_train.py")),
]


def test_every_command_prints_its_help_and_does_nothing_else(tmp_path):
    """All at once (each costs its imports), from an empty folder: a command that ran would write or fail there."""
    runs = []
    for i, command in enumerate(COMMANDS):
        cwd = tmp_path / str(i)
        cwd.mkdir()
        runs.append((command, cwd, subprocess.Popen([*command, "--help"], cwd=cwd, text=True,
                                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    for command, cwd, proc in runs:
        out, err = proc.communicate(timeout=300)
        name = " ".join(Path(c).name for c in command)
        assert proc.returncode == 0, f"{name} --help: exit {proc.returncode}\n{err[-2000:]}"
        assert out.startswith("usage:"), f"{name} --help printed no usage:\n{out[:500]}"
        assert not any(cwd.iterdir()), f"{name} --help wrote {sorted(p.name for p in cwd.iterdir())}"
