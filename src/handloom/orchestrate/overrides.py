"""params.yaml overrides for a flow run, applied in place the way `dvc exp run --set-param` does."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from handloom.params import ParamsError, parse_params, read_yaml


def flatten(overrides: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"shard": {"max_mb": 8}} and {"shard.max_mb": 8} both become {"shard.max_mb": 8}."""
    flat = {}
    for key, value in overrides.items():
        path = f"{prefix}{key}"
        flat.update(flatten(value, f"{path}.") if isinstance(value, dict) else {path: value})
    return flat


def apply_overrides(params_file: str | Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """Set existing keys of params.yaml (comments kept); returns what was set.

    A key that is not already in the file is refused by name: a typo must not add a key that no
    stage reads while the run silently uses the old value. The overrides are applied to a copy and
    validated first (`{"train": 5}` would replace a whole section): nothing is written unless the
    result is a valid params.yaml.
    """
    # DVC's internal round-trip YAML (what `dvc exp run -S` edits params.yaml with): comments and order kept.
    # Internal API, pinned with dvc in pyproject.toml; tests/test_flows.py covers it.
    from dvc.utils.serialize import modify_yaml

    flat = flatten(overrides)
    name = Path(params_file).name
    original = read_yaml(Path(params_file).read_text())
    preview = copy.deepcopy(original)
    set_keys(preview, flat, name)
    if valid(original):  # a handloom params.yaml stays one (other DVC projects get the shape check of set_keys)
        parse_params(preview)  # ParamsError naming the key path; the file is untouched
    with modify_yaml(params_file) as data:
        set_keys(data, flat, name)
    return flat


def set_keys(data, flat: dict[str, Any], name: str) -> None:
    """Set each dotted key of `flat` in the nested mapping `data`, where it already exists."""
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            raise ParamsError(f"params override {dotted!r}: no such key in {name}")
        if isinstance(node[leaf], dict) and not isinstance(value, dict):
            raise ParamsError(f"params override {dotted!r}: {value!r} would replace the whole section")
        node[leaf] = value


def valid(data) -> bool:
    try:
        parse_params(data)
    except ParamsError:
        return False
    return True
