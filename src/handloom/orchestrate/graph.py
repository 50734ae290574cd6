"""The stage graph as DVC plans it for `dvc repro <targets>`, read through DVC's own API."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class StageNode:
    name: str                   # DVC's address: `shard`, `ingest@synthetic`, `sub/dvc.yaml:train`
    upstream: tuple[str, ...]   # stages whose outputs this one reads
    cmd: str                    # the command lines, joined with newlines; "" for imports
    network: bool               # an import or a dependency on a remote URL: worth retrying
    outs: tuple[str, ...] = ()  # output paths relative to the repo root

    @property
    def group(self) -> str:
        """`ingest` for `ingest@synthetic`: the dvc.yaml entry a foreach stage was generated from."""
        return self.name.rsplit(":", 1)[-1].split("@", 1)[0]


def read_graph(root: str | Path, targets: list[str] | None = None) -> list[StageNode]:
    """Stages `dvc repro <targets>` would visit, dependencies first.

    DVC resolves targets and names stages relative to the working directory, so it runs in a
    child process at the repo root rather than behind a chdir in this (threaded) process.
    """
    out = subprocess.run([sys.executable, "-m", "handloom.orchestrate.graph", *(targets or [])],
                         cwd=root, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError("reading the DVC stage graph failed:\n" + "\n".join(out.stderr.strip().splitlines()[-5:]))
    return [StageNode(**{**n, "upstream": tuple(n["upstream"]), "outs": tuple(n["outs"])})
            for n in json.loads(out.stdout)]


def _plan(targets: list[str]) -> list[StageNode]:
    """In the repo root: DVC's own plan (the graph `dvc dag` draws), minus data sources (`dvc add`).

    DVC has no public API for "the stages `dvc repro <targets>` would visit", so this calls its internals
    (dvc.repo.reproduce, dvc.repo.graph) as `dvc repro` itself does; dvc is pinned in pyproject.toml, and
    tests/test_flows.py fails when a DVC upgrade changes them."""
    import networkx as nx
    from dvc.repo import Repo
    from dvc.repo.graph import get_subgraph_of_nodes
    from dvc.repo.reproduce import collect_stages, get_active_graph

    with Repo() as repo:
        graph = get_active_graph(repo.index.graph)   # edges point from a stage to the stages it reads
        sources = collect_stages(repo, targets) if targets else None
        sub = get_subgraph_of_nodes(graph, sources)
        runnable = [s for s in nx.dfs_postorder_nodes(sub) if not (s.is_data_source and not s.is_import)]
        keep = set(runnable)
        return [StageNode(name=s.addressing,
                          upstream=tuple(sorted(u.addressing for u in sub.successors(s) if u in keep)),
                          cmd="\n".join(s.cmd) if isinstance(s.cmd, list) else (s.cmd or ""),
                          network=s.is_import or any(getattr(d.fs, "protocol", "local") != "local" for d in s.deps),
                          outs=tuple(os.path.relpath(o.fs_path, repo.root_dir) for o in s.outs))
                for s in runnable]


if __name__ == "__main__":
    print(json.dumps([asdict(n) for n in _plan(sys.argv[1:])]))
