"""A DVC remote set up as the README says keeps history readable: `dvc metrics diff` and `make report-diff` against a
commit made before the remote existed, with the data pushed to a real S3 server on 127.0.0.1 (`rclone serve s3`);
the remote set up the old way (keys alone in .dvc/config.local) makes `make report-diff` fail loudly, not show every
number as new. And the .gitignore files DVC writes are no part of a stage's directory deps."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dvc_remote import DVC, run

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent


def commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", message], repo)


def write_run(repo: Path, psnr: float, steps: int) -> None:
    (repo / "params.yaml").write_text(f"train:\n  max_steps: {steps}\n")
    (repo / "reports").mkdir(exist_ok=True)
    (repo / "reports" / "metrics.json").write_text(f'{{"psnr": {psnr}}}\n')


def project_with_history(repo: Path) -> Path:
    """A base run committed before any remote, then a second run and the remote, as the README sets it up."""
    repo.mkdir()
    run(["git", "init", "-q"], repo)
    run([DVC, "init", "-q"], repo)
    (repo / "dvc.yaml").write_text("stages:\n  evaluate:\n    cmd: 'true'\n    params: [train]\n"
                                   "    metrics:\n    - reports/metrics.json:\n        cache: false\n")
    write_run(repo, psnr=8.0, steps=250)
    (repo / "data.txt").write_text("shards\n")
    run([DVC, "add", "-q", "data.txt"], repo)
    commit(repo, "base run")
    write_run(repo, psnr=9.5, steps=400)
    # README, "Pull shards from remote storage": url and endpoint committed, keys only in the environment
    run([DVC, "remote", "add", "-d", "storage", "s3://bucket/handloom"], repo)
    run([DVC, "remote", "modify", "storage", "endpointurl", os.environ["AWS_ENDPOINT_URL"]], repo)
    commit(repo, "second run, remote")
    return repo


def make_report_diff(repo: Path, base: str) -> subprocess.CompletedProcess:
    """The project's own `make report-diff`, run in `repo` with this test's virtualenv as the Makefile's."""
    (repo / ".venv").symlink_to(VENV)
    shutil.copy2(ROOT / "pyproject.toml", repo)  # older than the venv's stamp: `setup` has nothing to do
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), "-o", ".venv/.installed", "report-diff",
                           f"BASE={base}"], cwd=repo, env=env, capture_output=True, text=True)


def aws_keys() -> dict:
    return {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}


def test_remote_with_keys_in_the_environment_keeps_old_revisions_readable(s3, tmp_path):
    repo = project_with_history(tmp_path / "repo")
    run([DVC, "push", "-q"], repo, **aws_keys())
    assert any((s3 / "handloom" / "files" / "md5").rglob("*"))  # the push reached the loopback server

    diff = run([DVC, "metrics", "diff", "HEAD~1", "--json"], repo, **aws_keys())
    assert '"old": 8.0, "new": 9.5' in diff
    done = make_report_diff(repo, "HEAD~1")
    assert done.returncode == 0, done.stderr
    text = (repo / "build" / "report-diff" / "report-diff.md").read_text()
    assert "| reports/metrics.json | psnr | 8 | 9.5 | 1.5 |" in text
    assert "| params.yaml | train.max_steps | 250 | 400 |" in text


def test_report_diff_fails_loudly_when_dvc_cannot_read_the_base(s3, tmp_path):
    """The old README's setup: keys alone in .dvc/config.local. DVC then cannot parse the base revision's config
    (its .dvc/config has no `storage` remote to complete) and only warns; the diff must not pretend 8.0 never was."""
    repo = project_with_history(tmp_path / "repo")
    for option in ("access_key_id", "secret_access_key"):
        run([DVC, "remote", "modify", "--local", "storage", option, os.environ[f"AWS_{option.upper()}"]], repo)
    done = make_report_diff(repo, "HEAD~1")
    assert done.returncode != 0
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "HEAD~1" in error[0] and "expected 'url'" in error[0], done.stderr
    assert not (repo / "build" / "report-diff" / "report-diff.md").exists()


@pytest.mark.parametrize("edit", ["rewritten", "deleted"])
def test_gitignore_files_beside_outputs_are_not_deps(tmp_path, edit):
    """shard depends on data/ingest, where DVC also writes (and Git tracks) data/ingest/.gitignore: with the
    project's .dvcignore, only the data counts."""
    repo = tmp_path / "repo"
    repo.mkdir()
    run(["git", "init", "-q"], repo)
    run([DVC, "init", "-q"], repo)
    shutil.copy(ROOT / ".dvcignore", repo / ".dvcignore")
    (repo / "params.yaml").write_text("ingest:\n  a: {n: 1}\n  b: {n: 2}\n")
    (repo / "dvc.yaml").write_text(
        "stages:\n  ingest:\n    foreach: ${ingest}\n    do:\n"
        "      cmd: mkdir -p data/ingest/${key} && echo ${item.n} > data/ingest/${key}/x\n"
        "      outs:\n      - data/ingest/${key}\n"
        "  shard:\n    cmd: cat data/ingest/a/x data/ingest/b/x > out.txt\n    deps:\n    - data/ingest\n"
        "    outs:\n    - out.txt\n")
    run([DVC, "repro", "-q"], repo)
    commit(repo, "run")
    gitignore = repo / "data" / "ingest" / ".gitignore"
    assert gitignore.read_text() == "/a\n/b\n"
    if edit == "rewritten":
        gitignore.write_text("/b\n/a\n")
    else:
        gitignore.unlink()
    assert "up to date" in run([DVC, "status", "shard"], repo)
