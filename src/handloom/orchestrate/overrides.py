"""params.yaml overrides for a flow run, applied in place the way `dvc exp run --set-param` does."""
from __future__ import annotations

from pathlib import Path
from typing import Any


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
    stage reads while the run silently uses the old value. Nothing is written if any key is bad.
    """
    # DVC's internal round-trip YAML (what `dvc exp run -S` edits params.yaml with): comments and order kept.
    # Internal API, pinned with dvc in pyproject.toml; tests/test_flows.py covers it.
    from dvc.utils.serialize import modify_yaml

    flat = flatten(overrides)
    with modify_yaml(params_file) as data:
        for dotted, value in flat.items():
            *parents, leaf = dotted.split(".")
            node = data
            for key in parents:
                node = node.get(key) if isinstance(node, dict) else None
            if not isinstance(node, dict) or leaf not in node:
                raise ValueError(f"params override {dotted!r}: no such key in {Path(params_file).name}")
            node[leaf] = value
    return flat
