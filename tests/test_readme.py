"""Issue #21, must-show 2: the README's sections, run top to bottom in a fresh clone, as a reader would (slow).

Every ```bash and ```python block of README.md is run, in README order, in a `git clone` of this repository (its
committed HEAD), in one shell environment carried from block to block as a reader's terminal carries it. A block is
run as written except for the substitutions STEPS lists, each with its reason; a substitution whose text is no
longer in the README fails the test, and so does a block no step claims: nothing is skipped silently.

What is substituted, in short: the clone uses this test's virtualenv (linked as .venv; `make -o .venv/.installed`
keeps make from reinstalling into it), tiny params (the README's full run takes 11 minutes), free loopback ports and
temporary folders instead of fixed ones (other jobs share this machine), a tiny random inpainting pipeline for the
Stable Diffusion one the README names, and a loopback HTTP server for `https://data.example.com`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# The README's run with these instead of params.yaml's (11 minutes on 2 cores): small enough for minutes, big enough
# for every split (6 sequences: 4 train, 1 val, 1 test) and every stage's outputs.
TINY = {"ingest.synthetic.n_sequences": 6, "ingest.synthetic.n_frames": 3, "ingest.synthetic.n_cameras": 2,
        "train.max_steps": 10, "train.batch_size": 4, "train.sample_every_n_steps": 10,
        "train.checkpoint_every_n_steps": 10, "train.log_every_n_steps": 5, "evaluate.n_pairs": 8,
        "report.grid_rows": 4}
NO_REINSTALL = "make -o .venv/.installed"  # .venv is this test's virtualenv, linked: never reinstall into it


@dataclass
class Block:
    section: str
    lang: str
    code: str


@dataclass
class Step:
    """How one README block runs: `(old, new, why)` substitutions, then `after`, Python run once it finished."""

    section: str
    lang: str
    subs: list[tuple[str, str, str]] = field(default_factory=list)
    after: object = None


def readme_blocks(text: str) -> list[Block]:
    """The fenced bash and python blocks of the README, each with the heading it lies under."""
    blocks, section, lines, i = [], "", text.split("\n"), 0
    while i < len(lines):
        if lines[i].startswith("#"):
            section = lines[i].lstrip("#").strip()
        elif lines[i].startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            if lines[i][3:] in ("bash", "python"):
                blocks.append(Block(section, lines[i][3:], "\n".join(lines[i + 1:end])))
            i = end
        i += 1
    return blocks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    pytest.fail(f"nothing listens on 127.0.0.1:{port} after {seconds} s")


class Reader:
    """A reader's terminal in the clone: one environment carried from block to block, background jobs stopped at
    the end."""

    def __init__(self, clone: Path, env: dict):
        self.clone, self.env, self.sessions, self.log = clone, env, [], []

    def bash(self, code: str, timeout: float = 600) -> str:
        dump = self.clone.parent / "env.dump"
        script = f"set -eo pipefail\n{code}\nenv -0 > {dump}\n"
        proc = subprocess.Popen(["bash", "-c", script], cwd=self.clone, env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.sessions.append(proc.pid)
        out, _ = proc.communicate(timeout=timeout)
        self.log.append(f"$ {code}\n{out}")
        assert proc.returncode == 0, f"exit {proc.returncode}:\n$ {code}\n{out[-4000:]}"
        self.env = dict(item.split("=", 1) for item in dump.read_text().split("\0") if "=" in item)
        return out

    def python(self, code: str) -> str:
        path = self.clone.parent / "block.py"
        path.write_text(code)
        return self.bash(f"python {path}")

    def stop(self) -> None:
        for pgid in reversed(self.sessions):
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def tiny_params(clone: Path) -> None:
    params = yaml.safe_load((clone / "params.yaml").read_text())
    for dotted, value in TINY.items():
        *path, key = dotted.split(".")
        node = params
        for part in path:
            node = node[part]
        assert key in node, dotted
        node[key] = value
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def check_parameters_example(reader: Reader) -> None:
    """The README's ```text transcript under "Parameters": a bad value stops the stage with its path, exit 2."""
    block = re.search(r"```text\n\$ (python stages/train.py)\n(.*?)```", (reader.clone / "README.md").read_text(),
                      re.S)
    params = reader.clone / "params.yaml"
    saved = params.read_text()
    params.write_text(saved.replace("depth: 4", "depth: 0"))
    try:
        proc = subprocess.run(block[1].split(), cwd=reader.clone, env=reader.env, capture_output=True, text=True)
    finally:
        params.write_text(saved)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == block[2].strip().splitlines(), proc.stderr


def run_deployment_to_completion(reader: Reader, out: str) -> None:
    """`prefect deployment run` returns at once: follow its flow run until the worker finished it."""
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", out)[1]
    code = ("import sys, time\nfrom uuid import UUID\nfrom prefect.client.orchestration import get_client\n"
            "with get_client(sync_client=True) as client:\n"
            "    for _ in range(300):\n"
            f"        state = client.read_flow_run(UUID('{run_id}')).state\n"
            "        if state.is_final():\n"
            "            print(state.type.value); sys.exit(0 if state.is_completed() else 1)\n"
            "        time.sleep(2)\n"
            "sys.exit(1)\n")
    assert "COMPLETED" in reader.python(code)


@pytest.fixture
def reader(tmp_path):
    clone = tmp_path / "handloom"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    # A clone of main has `main`; a clone of another branch's worktree has it as origin/main only.
    if subprocess.run(["git", "rev-parse", "-q", "--verify", "refs/heads/main"], cwd=clone).returncode:
        subprocess.run(["git", "branch", "-q", "main", "origin/main"], cwd=clone, check=True)
    (clone / ".venv").symlink_to(VENV_BIN.parent)
    (clone / ".venv" / ".installed").exists() or pytest.skip("the virtualenv has no .installed stamp")
    tiny_params(clone)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "HANDLOOM_", "AWS_", "PYTEST"))}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env['PATH']}", PYTHONPATH=str(clone / "src"), HOME=str(tmp_path / "home"),
               PREFECT_HOME=str(tmp_path / "prefect"), HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1",
               DO_NOT_TRACK="1", DVC_NO_ANALYTICS="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               GIT_AUTHOR_NAME="reader", GIT_AUTHOR_EMAIL="reader@example.com", GIT_COMMITTER_NAME="reader",
               GIT_COMMITTER_EMAIL="reader@example.com", OMP_NUM_THREADS="1")
    (tmp_path / "home").mkdir()
    r = Reader(clone, env)
    yield r
    r.stop()


def test_readme_sections_run_top_to_bottom_in_a_fresh_clone(reader, tmp_path):
    from test_outpaint import tiny_inpainting_pipeline

    clone = reader.clone
    prefect_port, dask_port, s3_port, http_port = free_port(), free_port(), free_port(), free_port()
    s3_root = tmp_path / "s3"
    (tmp_path / "sd").mkdir()
    pipeline = tiny_inpainting_pipeline(tmp_path / "sd")
    http = subprocess.Popen([sys.executable, "-m", "http.server", str(http_port), "--bind", "127.0.0.1",
                             "--directory", str(s3_root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ports = f"PREFECT_PORT={prefect_port}"
    steps = [
        Step("Two commands", "bash", [
            ("make repro", f"{NO_REINSTALL} repro", "the clone's .venv is this test's, linked; tiny params"),
            ("make test    # creates .venv if missing, installs, runs pytest (CI calls this through .ci/run)",
             f"{NO_REINSTALL} -n test && pytest -q tests/test_io.py",
             "the whole suite is CI's (8 minutes): its recipe is printed, one test file runs")]),
        Step("The unified schema", "python", [
            ('split="val")  # one dataset\'s config',
             'split="val")  # one dataset\'s config\nassert {s: shards[s].num_rows > 0 for s in shards} == '
             '{"train": True, "val": True, "test": True} and synthetic.num_rows > 0', "check what it says")]),
        Step("Training on a GPU: presets", "bash", [
            ('eval "$(python -m handloom.orchestrate.presets gpu-b2-256)"',
             'python -m handloom.orchestrate.presets gpu-b2-256 | grep -q "^dvc exp run -n gpu-b2-256 "',
             "the experiment trains DiT-B/2 at 256 px on a GPU with SD's VAE: the command it evals is checked, "
             "not run"),
            ("python -m handloom.orchestrate.presets gpu-xl2-256 --apply",
             "cp params.yaml ../preset-params.yaml && python -m handloom.orchestrate.presets gpu-xl2-256 --apply "
             "--params ../preset-params.yaml && grep -q 'resolution: 256' ../preset-params.yaml",
             "applied to a copy: the clone's params.yaml stays the tiny CPU run the next sections use")]),
        Step("Reviewing a run in a pull request", "bash", [
            ("make report-diff", f"{NO_REINSTALL} report-diff", "the linked .venv")]),
        Step("Orchestration with Prefect", "bash"),
        Step("Server, worker, deployments", "bash", [
            ("make prefect-server ", f"{NO_REINSTALL} prefect-server {ports} > prefect-server.log 2>&1 & ",
             "terminal 1 is a background job here, on a free port"),
            ("make prefect-deploy ", f"python -c 'import socket,time\nwhile socket.socket().connect_ex((\"127.0.0.1\","
             f"{prefect_port})): time.sleep(1)' && sleep 5 && {NO_REINSTALL} prefect-deploy {ports} ",
             "wait for the server to listen"),
            ("make prefect-worker ", f"{NO_REINSTALL} prefect-worker {ports} > prefect-worker.log 2>&1 & ",
             "terminal 2 is a background job")]),
        Step("Server, worker, deployments", "bash", after=lambda out: (run_deployment_to_completion(reader, out),
                                                                      reader.stop())),  # no scheduled run after
        Step("Multi-machine", "bash", [
            ("dask scheduler --host 10.0.0.1 --port 8786 ",
             f"dask scheduler --host 127.0.0.1 --port {dask_port} > dask.log 2>&1 & ", "this machine, a free port"),
            ("python -m handloom.cpu dask worker tcp://10.0.0.1:8786 --nworkers 16",
             f"{{ python -c 'import socket,time\nwhile socket.socket().connect_ex((\"127.0.0.1\",{dask_port})): "
             f"time.sleep(1)' && python -m handloom.cpu dask worker tcp://127.0.0.1:{dask_port} --nworkers 2",
             "2 cores here"),
            ("--nthreads 1   #", "--nthreads 1; } > dask-worker.log 2>&1 &  #",
             "a background job, its output in a file (an open pipe would keep the block from ending)"),
            ("HANDLOOM_DASK_SCHEDULER=tcp://10.0.0.1:8786 dvc repro shard",
             f"sleep 10 && HANDLOOM_DASK_SCHEDULER=tcp://127.0.0.1:{dask_port} dvc repro -f -s shard",
             "the workers' start; -f -s: shard is up to date, so make it (alone) run on the cluster")]),
        Step("Pull shards from remote storage", "bash", [
            ("/var/tmp/handloom-s3 &", f"{s3_root} > rclone.log 2>&1 &\npython -c 'import socket,time\nwhile "
             f"socket.socket().connect_ex((\"127.0.0.1\",{s3_port})): time.sleep(0.5)'",
             "its log aside; wait for it to listen"),
            ("/var/tmp/handloom-s3", str(s3_root), "a folder of this test"),
            ("127.0.0.1:9000", f"127.0.0.1:{s3_port}", "a free port")]),
        Step("Pull shards from remote storage", "bash", [
            ("http://127.0.0.1:9000", f"http://127.0.0.1:{s3_port}", "a free port")]),
        Step("Pull shards from remote storage", "bash", [
            ("dvc remote add --local web https://data.example.com/handloom",
             f"rm -rf .dvc/cache data/shards && dvc remote add --local web http://127.0.0.1:{http_port}/my-bucket/handloom",
             "a loopback HTTP server over the bucket's folder; an empty cache, so the pull fetches everything"),
            ("dvc remote modify --local web auth basic ", "# (skipped: the loopback server asks no password) ",
             "the README's `if the server asks`")]),
        Step("Pull shards from remote storage", "python", [
            ("import webdataset as wds",
             "import fsspec, pathlib\nfor f in pathlib.Path('data/shards').rglob('*'):\n    if f.is_file():\n"
             "        name = f.relative_to('data/shards').as_posix()\n"
             "        fsspec.filesystem('s3').put_file(str(f), f'my-bucket/handloom-shards/{name}')\n"
             "import webdataset as wds", "the README's `aws s3 sync` (no AWS CLI here): the same files through S3"),
            ("num_workers=8)", "num_workers=1)", "2 cores"),
            ("# batches of schema.BATCH_KEYS",
             "# batches of schema.BATCH_KEYS\nfrom handloom import schema\n"
             "assert set(next(iter(loader))) == set(schema.BATCH_KEYS)", "read one batch")]),
        Step("Generate", "bash", [
            ("--out build/generate/view.png",
             f"--out build/generate/view.png\n{NO_REINSTALL} docs-images\n"
             "cmp build/generate/pose.png docs/generate/pose.png && cmp build/generate/view.png docs/generate/view.png",
             "the prose's `make docs-images` writes what these commands write")]),
        Step("Generate", "python", [
            ("# (64, 64, 3) uint8", "\nassert image.shape == (64, 64, 3)", "check what it says")]),
        Step("Outpainting a body around the hand", "bash", [
            ("/models/sd-inpainting", str(pipeline), "a tiny random pipeline built by the test (no weights here)"),
            ("--canvas 512x768", "--canvas 128x192", "a random UNet: small and few steps"),
            ("--at 192,420 --hand-size 128", "--at 48,105 --hand-size 32 --steps 2", "the same layout at 1/4")]),
    ]
    blocks = readme_blocks((clone / "README.md").read_text())
    AWS = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}"}
    try:
        assert [(b.section, b.lang) for b in blocks] == [(s.section, s.lang) for s in steps], \
            "README blocks and the steps of this test differ: add a step for the new block"
        for i, (block, step) in enumerate(zip(blocks, steps)):
            code = block.code
            for old, new, why in step.subs:
                assert old in code, f"README, {step.section}: no longer says {old!r} (substituted: {why})"
                code = code.replace(old, new)
            if block.section.startswith("Pull shards") and block.lang == "python":
                reader.env.update(AWS)  # the prose: export AWS_ENDPOINT_URL for boto3 / s3fs
            out = reader.bash(code) if block.lang == "bash" else reader.python(code)
            if step.after:
                step.after(out)
            if i == 0:
                check_parameters_example(reader)  # the ```text transcript that follows, before anything else changes
                assert (clone / "data" / "shards" / "README.md").is_file()
        assert (clone / "build" / "generate" / "body.png").is_file()
    except BaseException:
        print("\n".join(reader.log)[-20000:])
        raise
    finally:
        http.terminate()
        http.wait(timeout=10)
    shutil.rmtree(tmp_path / "hf", ignore_errors=True)
    json.dumps(reader.env)  # the environment stayed text
