"""A flow task whose stage's outputs are held by another DVC process (a `dvc repro` or `dvc exp run` in the same
workspace) waits for them with backoff instead of failing with DVC's "is busy" error."""
import subprocess
import sys
import time
from pathlib import Path

from handloom.orchestrate.dvcrun import DVC, repro_stage, stage_env


def busy_repo(root: Path) -> Path:
    """Stage a takes a few seconds to write a.txt; stage b reads it."""
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([*DVC, "init", "-q"], cwd=root, check=True)
    (root / "dvc.yaml").write_text(
        "stages:\n"
        "  a:\n    cmd: python -c \"import time; time.sleep(6); open('a.txt', 'w').write('a')\"\n    outs: [a.txt]\n"
        "  b:\n    cmd: python -c \"open('b.txt', 'w').write(open('a.txt').read() + 'b')\"\n"
        "    deps: [a.txt]\n    outs: [b.txt]\n")
    return root


def test_a_stage_waits_while_another_dvc_run_holds_its_inputs(tmp_path):
    repo = busy_repo(tmp_path / "repo")
    other = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "a"], cwd=repo, env=stage_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        rwlock = repo / ".dvc" / "tmp" / "rwlock"
        deadline = time.monotonic() + 30
        while "a.txt" not in (rwlock.read_text() if rwlock.exists() else ""):  # stage a is running
            assert time.monotonic() < deadline and other.poll() is None
            time.sleep(0.05)
        lines = []
        run = repro_stage(repo, "b", timeout_s=120, log=lines.append)
    finally:
        other.wait(timeout=60)
    assert run.status == "ran" and (repo / "b.txt").read_text() == "ab"
    assert any("DVC is busy with another run; retrying" in line for line in lines)
