"""`make prefect-profile` makes the README's `prefect ...` commands reach the local server from any new shell: the
active profile carries PREFECT_API_URL (before, a new shell's `prefect deployment run` started a temporary server)."""
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_make_prefect_profile_sets_the_api_url_for_new_shells(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {"PREFECT_HOME": str(tmp_path)}
    made = subprocess.run(["make", "-s", "-o", ".venv/.installed", "prefect-profile", "PREFECT_PORT=4321"], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    shown = subprocess.run(["prefect", "config", "view"], env=env, capture_output=True, text=True, check=True).stdout
    assert "PREFECT_PROFILE='handloom'" in shown
    assert "PREFECT_API_URL='http://127.0.0.1:4321/api' (from profile)" in shown
