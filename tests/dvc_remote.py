"""Git + DVC commands against a DVC remote, shared by the remote-storage tests (the S3 round trip, the flaky S3)."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

DVC = str(Path(sys.executable).parent / "dvc")
SHARDS = "data/shards"


def run(args: list[str], cwd: Path, **env: str) -> str:
    """A git or dvc command that sees no AWS_* variables but `env`: DVC must find endpoint and keys in its own
    config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | env
    env.update(DVC_NO_ANALYTICS="1", AWS_EC2_METADATA_DISABLED="true", GIT_AUTHOR_NAME="t", GIT_COMMITTER_NAME="t",
               GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_EMAIL="t@example.com")
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def tar_digests(shards: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(shards.glob("*.tar"))}


def s3_credentials(repo: Path) -> None:
    """Keys go to .dvc/config.local (git-ignored), as on a user's machine."""
    for option in ("access_key_id", "secret_access_key"):
        run([DVC, "remote", "modify", "--local", "s3remote", option, os.environ[f"AWS_{option.upper()}"]], repo)


def clone(origin: Path, path: Path) -> Path:
    run(["git", "clone", "-q", str(origin), str(path)], origin.parent)
    assert not (path / SHARDS).exists()
    return path
