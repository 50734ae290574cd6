"""One place where benchmarks store their figures: benchmarks/results.json, one key per benchmark."""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results.json"
sys.path.insert(0, str(ROOT / "src"))


def record(key: str, value: dict) -> None:
    """Read, update one key, write atomically: other benchmarks keep their entries."""
    from handloom.io import write_json

    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[key] = value
    write_json(RESULTS, results)
