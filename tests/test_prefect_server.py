"""A real Prefect server on 127.0.0.1, the project's prefect.yaml deployed on a schedule of seconds, a process
worker, and a scheduled run that leaves the DVC outputs it should; every process it starts is stopped."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from dvc_toy import make_toy_repo

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]
DEPLOYMENT = "ingest-annotate-shard"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def started(cmd: list[str], env: dict, cwd: Path, log: Path):
    """A background process that is stopped, with everything it started, whatever happens.

    The worker starts each flow run in a session of its own, so killing its process group is not
    enough: the whole tree is collected first, then stopped.
    """
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for p in tree:
            with suppress(psutil.NoSuchProcess):
                p.terminate()
        for p in psutil.wait_procs(tree, timeout=20)[1]:
            p.kill()
        proc.wait()


def wait_for(probe, timeout_s: float, what: str, logs: list[Path]):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with suppress(httpx.HTTPError):
            if found := probe():
                return found
        time.sleep(1)
    tails = "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text().splitlines()[-30:]) for p in logs if p.exists())
    pytest.fail(f"no {what} after {timeout_s} s\n{tails}")


def finished_run(api: str, deployment_id: str, since: str) -> dict | None:
    runs = httpx.post(f"{api}/flow_runs/filter", json={
        "deployments": {"id": {"any_": [deployment_id]}},
        "flow_runs": {"start_time": {"after_": since},  # a reused PostgreSQL database may hold older runs
                      "state": {"type": {"any_": ["COMPLETED", "FAILED", "CRASHED"]}}}}).json()
    for run in runs:
        assert run["state"]["type"] == "COMPLETED", run["state"]["message"]
    return runs[0] if runs else None


def test_a_scheduled_run_completes_on_a_process_worker(tmp_path):
    repo = make_toy_repo(tmp_path / "repo")
    shutil.copy(ROOT / "prefect.yaml", repo)
    shutil.copytree(ROOT / "flows", repo / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_API_URL=api, DO_NOT_TRACK="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_SERVER_DATABASE_TIMEOUT="30",
               # seconds, not the minute-scale defaults: schedule at once, poll often, keep few runs ahead
               PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2", PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS="1",
               PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS="2", PREFECT_WORKER_QUERY_SECONDS="2")
    if url := os.environ.get("HANDLOOM_TEST_PREFECT_DB_URL"):  # e.g. `flows/postgres.sh url`; SQLite otherwise
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = url
    logs = [tmp_path / "server.log", tmp_path / "worker.log"]
    since = datetime.now(UTC).isoformat()

    def prefect(*args):
        out = subprocess.run([*PREFECT, *args], env=env, cwd=repo, capture_output=True, text=True, timeout=300,
                             check=False)
        assert out.returncode == 0, out.stdout + out.stderr

    with started([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path, logs[0]):
        wait_for(lambda: httpx.get(f"{api}/health").json() is True, 180, "healthy server", logs)
        prefect("work-pool", "create", "toy-pool", "--type", "process", "--overwrite")
        # The project's own prefect.yaml; the CLI adds a 5 s interval beside its nightly cron.
        prefect("--no-prompt", "deploy", "--name", DEPLOYMENT, "--pool", "toy-pool", "--interval", "5")
        deployment = httpx.get(f"{api}/deployments/name/handloom-pipeline/{DEPLOYMENT}").json()
        assert deployment["parameters"]["targets"] == ["shard"]
        assert deployment["global_concurrency_limit"]["limit"] == 1  # runs of one workspace never overlap
        with started([*PREFECT, "worker", "start", "--pool", "toy-pool", "--type", "process"], env, repo, logs[1]):
            run = wait_for(lambda: finished_run(api, deployment["id"], since), 300, "finished scheduled run", logs)

    assert run["auto_scheduled"], "the run was not made by the schedule"
    assert json.loads((repo / "data" / "shard.json").read_text()) == {"total": 5}
    assert {"ingest@a", "ingest@b", "shard"} <= set(yaml.safe_load((repo / "dvc.lock").read_text())["stages"])
    assert not (repo / "data" / "count.txt").exists(), "count is not upstream of shard"
