"""Named params presets (presets/<name>.yaml: the params.yaml keys a run changes), applied as `dvc exp run -S` does."""
from __future__ import annotations

import argparse
import shlex
import sys
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

    Every key must already be in params.yaml (as `dvc exp run -S` requires): a preset cannot add a key no stage
    reads.
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
    flags = [f"{dotted}={hydra_value(value)}" for dotted, value in read_preset(name, root).items()]
    return [arg for flag in flags for arg in ("-S", flag)]


def exp_run_command(name: str, root: str | Path = ".") -> str:
    """The shell command that runs the preset as a DVC experiment named after it."""
    return shlex.join(["dvc", "exp", "run", "-n", name, *set_param_args(name, root)])


def apply_preset(name: str, params_file: str | Path = "params.yaml") -> dict[str, Any]:
    """Write the preset into params.yaml (comments kept) after validating the result; returns what was set."""
    preset_params(name, params_file)  # nothing is written unless the result validates
    return apply_overrides(params_file, read_preset(name, Path(params_file).parent))


def main(argv: list[str] | None = None) -> int:
    """`python -m handloom.orchestrate.presets [NAME] [--apply]`: list, print as `dvc exp run`, or write a preset."""
    parser = argparse.ArgumentParser(prog="python -m handloom.orchestrate.presets", description=__doc__)
    parser.add_argument("name", nargs="?", help="e.g. gpu-xl2-256; without a name, list the presets")
    parser.add_argument("--apply", action="store_true", help="write the preset into params.yaml (comments kept)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    root = args.params.parent
    try:
        if args.name is None:
            print("\n".join(preset_names(root)))
        elif args.apply:
            changed = apply_preset(args.name, args.params)
            print(f"{args.params}: {len(changed)} values of preset {args.name} set; `dvc repro` trains it")
        else:
            preset_params(args.name, args.params)  # fails here, naming the key, rather than inside dvc
            print(exp_run_command(args.name, root))
    except (ParamsError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
