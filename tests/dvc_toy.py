"""A tiny DVC project for the flow tests: ingest@a and ingest@b (independent) -> shard; count reads only a."""
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

FILES = {
    "params.yaml": """\
        ingest:  # two sources, fetched independently; `fail` makes one fail on purpose
          a: {n: 2, sleep: 1.0, fail: false}
          b: {n: 3, sleep: 1.0, fail: false}
        """,
    "ingest.py": """\
        import json, sys, time, yaml
        name = sys.argv[1]
        p = yaml.safe_load(open("params.yaml"))["ingest"][name]
        start = time.time()
        if p["fail"]:
            sys.exit(f"ingest {name}: source unreachable")
        time.sleep(p["sleep"])
        json.dump({"n": p["n"], "start": start, "end": time.time()}, open(f"data/{name}.json", "w"))
        """,
    "count.py": """\
        import json
        open("data/count.txt", "w").write(str(json.load(open("data/a.json"))["n"]))
        """,
    "shard.py": """\
        import json
        total = sum(json.load(open(f"data/{k}.json"))["n"] for k in "ab")
        json.dump({"total": total}, open("data/shard.json", "w"))
        json.dump({"samples": total}, open("metrics.json", "w"))
        open("report.md", "w").write(f"# toy report\\n\\n{total} samples\\n")
        """,
    "dvc.yaml": """\
        stages:
          ingest:
            foreach: [a, b]
            do:
              cmd: python ingest.py ${item}
              deps:
              - ingest.py
              params:
              - ingest.${item}
              outs:
              - data/${item}.json
          count:
            cmd: python count.py
            deps: [count.py, data/a.json]
            outs: [data/count.txt]
          shard:
            cmd: python shard.py
            deps: [shard.py, data/a.json, data/b.json]
            outs: [data/shard.json, report.md: {cache: false}]
            metrics: [metrics.json: {cache: false}]
        """,
}


def make_toy_repo(root: Path) -> Path:
    """A git + DVC repo at `root` holding the toy pipeline, nothing run yet."""
    (root / "data").mkdir(parents=True)
    for name, text in FILES.items():
        (root / name).write_text(textwrap.dedent(text))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    return root


def dvc_status(root: Path) -> str:
    return subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=root, capture_output=True, text=True,
                          check=False).stdout


ANNOTATE_DVC_YAML = """\
stages:
  annotate:  # the shape of the real annotate stage, on one toy dataset
    foreach: [synthetic]
    do:
      cmd: python stages/annotate.py ${item}
      deps:
      - stages/annotate.py
      - data/ingest/${item}
      params:
      - annotate
      outs:
      - data/annotations/${item}
      metrics:
      - reports/data/${item}.json:
          cache: false
"""


def make_annotate_repo(root: Path, ingest_dir: Path, project: Path) -> Path:
    """A DVC repo whose one stage runs the project's real stages/annotate.py on an ingested toy dataset."""
    (root / "stages").mkdir(parents=True)
    shutil.copy(project / "stages" / "annotate.py", root / "stages")
    shutil.copytree(ingest_dir, root / "data" / "ingest" / "synthetic")
    (root / "dvc.yaml").write_text(ANNOTATE_DVC_YAML)
    (root / "params.yaml").write_text("annotate:\n  min_detection_confidence: 0.1\n  workers: 2\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    return root
