"""The connections between pieces: DVC deps cover the code each stage runs, and packages import one way only."""
from __future__ import annotations

import ast
import json
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

# The package graph runs one way: a module imports from its own package or from one listed before it.
LAYERS = [
    {"schema", "params", "io", "keypoint_metrics", "draw", "chunks", "cpu", "errors",  # base: formats, params, helpers
     "logs"},
    {"datasets"},
    {"annotate"},
    {"shards"},
    {"model"},
    {"train"},
    {"evaluate"},
    {"generate", "outpaint"},
    {"report"},
    {"orchestrate", "cli"},
]


def module_file(name: str) -> Path | None:
    """The source file of a handloom module (a package's __init__.py, or None when it has none)."""
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(path: Path) -> set[str]:
    """handloom modules a file imports anywhere (module level or inside functions: a lazy import runs too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from handloom.x import y` imports y as a module when y is one
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] == "handloom" and module_file(n)}
    return found


def parents_of(name: str) -> set[str]:
    """Importing a.b.c runs a/__init__ and a/b/__init__ first."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts)) if module_file(".".join(parts[:i]))}


def import_closure(path: Path) -> set[str]:
    """Every handloom module that running `path` imports, transitively."""
    todo, seen = list(imported_modules(path)), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += imported_modules(module_file(name)) | parents_of(name)
    return seen


def stage_code_deps() -> dict[str, tuple[Path, list[str]]]:
    """Each dvc.yaml stage's script and its declared deps (foreach stages read through their `do` template)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        script = next(w for w in body["cmd"].split() if w.endswith(".py"))
        out[name] = (ROOT / script, body.get("deps", []))
    return out


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", sorted(stage_code_deps()))
def test_stage_deps_cover_the_code_it_runs(stage):
    script, deps = stage_code_deps()[stage]
    assert covered(script, deps), f"{stage}: its script {script.name} is not a dep"
    missing = sorted(m for m in import_closure(script) if not covered(module_file(m), deps))
    assert not missing, f"dvc.yaml stage {stage} runs these modules but does not list them in deps: {missing}"


def layer_of(name: str) -> int:
    top = name.split(".")[1] if "." in name else ""
    return next(i for i, group in enumerate(LAYERS) if top in group)


def package_of(name: str) -> str:
    top = name.split(".")[1]
    return "base" if top in LAYERS[0] else top  # the base modules are one package


def all_modules() -> list[str]:
    return sorted(".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
                  for p in (SRC / "handloom").rglob("*.py"))


def test_packages_import_downwards_only():
    upward = []
    for name in all_modules():
        if name == "handloom":
            continue
        for dep in imported_modules(module_file(name)):
            if dep == "handloom" or package_of(dep) == package_of(name):
                continue
            if layer_of(dep) >= layer_of(name):
                upward.append(f"{name} -> {dep}")
    assert not upward, "imports that run sideways or upwards in the package graph:\n" + "\n".join(upward)


def test_no_import_cycles_between_modules():
    graph = {name: imported_modules(module_file(name)) - {name} for name in all_modules()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_every_module_belongs_to_a_layer():
    for name in all_modules():
        if name != "handloom":
            layer_of(name)  # StopIteration names a module the layer table does not place


def changed_deps_of(stage: str, repo: Path) -> set[str]:
    status = subprocess.run(["dvc", "status", stage, "--json"], cwd=repo, capture_output=True, text=True)
    assert status.returncode == 0, status.stderr
    entries = json.loads(status.stdout).get(stage, [])
    return {p for e in entries if isinstance(e, dict) for p in e.get("changed deps", {})}


def test_dvc_status_sees_an_edit_to_the_sampler(tmp_path):
    """The promise the deps make: editing model/diffusion.py makes evaluate (which samples through it) changed."""
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    assert not any(p.startswith("src/") for p in changed_deps_of("evaluate", repo))
    diffusion = repo / "src/handloom/model/diffusion.py"
    diffusion.write_text(diffusion.read_text() + "\n# an edit\n")
    assert {"src/handloom/model", "src/handloom/model/diffusion.py"} & changed_deps_of("evaluate", repo)
