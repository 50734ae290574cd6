"""Named params presets (presets/<name>.yaml: the params.yaml keys a run changes), applied as `dvc exp run -S` does."""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import yaml

from handloom.orchestrate.overrides import apply_overrides, flatten
from handloom.params import Params, ParamsError, parse_params

PRESETS_DIR = "presets"


def preset_names(root: str | Path = ".") -> list[str]:
    return sorted(p.stem for p in (Path(root) / PRESETS_DIR).glob("*.yaml"))


def read_preset(name: str, root: str | Path = ".") -> dict[str, Any]:
    """The preset's keys as {"train.lr": 0.0001, ...}."""
    path = Path(root) / PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ParamsError(f"unknown preset {name!r}; one of {preset_names(root)}")
    return flatten(yaml.safe_load(path.read_text()) or {})


def preset_params(name: str, params_file: str | Path = "params.yaml") -> Params:
    """params.yaml with the preset applied, validated: what `dvc exp run` with the preset's -S flags trains with.

    Every key must already be in params.yaml (as `dvc exp run -S` requires), so a preset cannot add a key no stage reads.
    """
    params_file = Path(params_file)
    data = yaml.safe_load(params_file.read_text())
    for dotted, value in read_preset(name, params_file.parent).items():
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            raise ParamsError(f"preset {name}: {dotted}: no such key in {params_file.name}")
        node[leaf] = value
    return parse_params(data)


def hydra_value(value: Any) -> str:
    """A value in the override grammar `dvc exp run -S` parses (Hydra's): strings quoted so "32" stays a string."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def set_param_args(name: str, root: str | Path = ".") -> list[str]:
    """["-S", "train.lr=0.0001", ...]: the preset as `dvc exp run` flags."""
    return [arg for dotted, value in read_preset(name, root).items() for arg in ("-S", f"{dotted}={hydra_value(value)}")]


def exp_run_command(name: str, root: str | Path = ".") -> str:
    """The shell command that runs the preset as a DVC experiment named after it."""
    return shlex.join(["dvc", "exp", "run", "-n", name, *set_param_args(name, root)])


def apply_preset(name: str, params_file: str | Path = "params.yaml") -> dict[str, Any]:
    """Write the preset into params.yaml (comments kept) after validating the result; returns what was set."""
    preset_params(name, params_file)  # nothing is written unless the result validates
    return apply_overrides(params_file, read_preset(name, Path(params_file).parent))
