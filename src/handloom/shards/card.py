"""The shards' Hugging Face dataset card (README.md): declared features, every dataset's license, its splits.

Without a card, `datasets.load_dataset(<shards folder>)` guesses each member's type from the first five samples
and silently drops what they lack (a `metadata.gestures` of `{"left": ...}` loads as `{"right": None}` when the
first samples held right hands). The card declares the members (schema.SHARD_MEMBERS) and the `.json` fields as
the union over every sample, so every field loads. The `.json` fields are not restated here: they are read from
the tars, once per dataset and cached in stats/ under the dataset's fingerprint, so a dataset whose shards were
kept is not read again. Written with PyYAML only: the shard stage does not need `datasets`.
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import yaml

from handloom import schema
from handloom.io import write_bytes, write_json

# A JSON value's type, as a tree: a Value dtype name, "json" (mixed kinds: kept as JSON text, loads as written),
# {"list": type} or {"struct": {field: type}}. "null" is a field never seen with a value.
NULL, JSON = "null", "json"
SCALARS = {bool: "bool", int: "int64", float: "float64", str: "string"}
NUMBERS = {"int64", "float64"}
# Members with a fixed type; `.json` is inferred. WebDataset's sample name and tar path come first, as
# `datasets` adds them.
MEMBER_FEATURES = {"__key__": "string", "__url__": "string", "jpg": "image", "mask.png": "image",
                   "kpts.npy": {"array2_d": {"shape": [schema.NUM_KEYPOINTS, len(schema.KEYPOINT_COLUMNS)],
                                             "dtype": "float32"}}}


def json_type(value):
    """The type tree of one decoded JSON value."""
    if value is None:
        return NULL
    if isinstance(value, dict):
        return {"struct": {k: json_type(v) for k, v in value.items()}}
    if isinstance(value, list):
        item = NULL
        for v in value:
            item = merge_types(item, json_type(v))
        return {"list": item}
    return SCALARS[type(value)]


def merge_types(a, b):
    """The narrowest type holding values of both: absent keys and nulls load as None, ints widen to floats,
    anything else that disagrees becomes JSON text."""
    if a == NULL or a == b:
        return b
    if b == NULL:
        return a
    if isinstance(a, str) and isinstance(b, str) and {a, b} <= NUMBERS:
        return "float64"
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        if "list" in a:
            return {"list": merge_types(a["list"], b["list"])}
        return {"struct": {k: merge_types(a["struct"].get(k, NULL), b["struct"].get(k, NULL))
                           for k in sorted({*a["struct"], *b["struct"]})}}
    return JSON


def yaml_feature(name: str, kind) -> dict:
    """One entry of the card's `features:` list, in the layout `datasets.Features._from_yaml_list` reads."""
    if isinstance(kind, dict) and "struct" in kind:
        return {"name": name, "struct": [yaml_feature(k, v) for k, v in kind["struct"].items()]}
    if isinstance(kind, dict) and "list" in kind:
        return {"name": name, "list": yaml_list(kind["list"])}
    return {"name": name, "dtype": kind}


def yaml_list(kind):
    """A list's item type, written inline as `datasets` writes it."""
    if isinstance(kind, dict) and "struct" in kind:
        return [yaml_feature(k, v) for k, v in kind["struct"].items()]
    if isinstance(kind, dict) and "list" in kind:
        return {"list": yaml_list(kind["list"])}
    return kind


def scan_dataset(out_dir: Path, shards: list[str]) -> dict:
    """What the card says of one dataset, read from its tars' `.json` members (the other members are skipped,
    not read): the type of its `.json` fields, its licenses and sources, and its samples per split."""
    kind, licenses, sources, splits = NULL, set(), set(), {}
    for name in shards:
        with tarfile.open(out_dir / name) as tar:
            for member in tar:
                if not member.name.endswith(".json"):
                    continue
                meta = json.loads(tar.extractfile(member).read())
                kind = merge_types(kind, json_type(meta))
                licenses.add(meta.get("license"))
                sources.add(meta.get("source"))
                split = schema.SampleKey.parse(meta["key"]).split
                splits[split] = splits.get(split, 0) + 1
    return dict(json=kind, licenses=sorted(filter(None, licenses)), sources=sorted(filter(None, sources)),
                splits=splits)  # cached as JSON with sorted keys: the card orders them by schema.SPLITS


def dataset_facts(out_dir: Path, dataset: str, shards: list[str]) -> dict:
    """scan_dataset's result, reused while the dataset's fingerprint (its record, written with its shards)
    is unchanged."""
    stats = out_dir / schema.STATS_DIR
    record = json.loads((stats / schema.DATASET_RECORD_FILE.format(dataset=dataset)).read_text())
    cache = stats / schema.DATASET_CARD_FILE.format(dataset=dataset)
    try:
        cached = json.loads(cache.read_text())
        if cached["fingerprint"] == record["fingerprint"]:
            return cached["facts"]
    except (OSError, ValueError, KeyError):
        pass
    facts = scan_dataset(out_dir, shards)
    write_json(cache, dict(fingerprint=record["fingerprint"], facts=facts))
    return facts


def config(name: str, datasets: dict[str, dict], features: list[dict]) -> tuple[dict, dict]:
    """A `configs:` entry (data files per split, by shard name) and its `dataset_info:` entry."""
    splits = {}
    for facts in datasets.values():
        for split, n in facts["splits"].items():
            splits[split] = splits.get(split, 0) + n
    order = [s for s in schema.SPLITS if s in splits]
    pattern = "*" if name == "default" else name
    files = [{"split": s, "path": schema.SHARD_GLOB.format(dataset=pattern, split=s)} for s in order]
    info = {"config_name": name, "features": features,
            "splits": [{"name": s, "num_examples": splits[s]} for s in order]}
    return {"config_name": name, "data_files": files}, info


class CardDumper(yaml.SafeDumper):
    """Every config's features written out in full: the Hub's card parser is not every YAML parser (no anchors)."""

    def ignore_aliases(self, data) -> bool:
        return True


def card_text(facts: dict[str, dict]) -> str:
    """README.md: YAML metadata (configs: all datasets as `default`, and one per dataset), then a table of the
    datasets with their licenses."""
    kind = NULL
    for f in facts.values():
        kind = merge_types(kind, f["json"])
    features = [yaml_feature(name, t) for name, t in MEMBER_FEATURES.items()] + [yaml_feature("json", kind)]
    configs, infos = zip(*(config(name, ds, features) for name, ds in
                           [("default", facts), *((d, {d: f}) for d, f in facts.items())]
                           if any(f["splits"] for f in ds.values())))
    meta = {"license": "other", "pretty_name": "handloom hand shards", "tags": ["hands", "webdataset"],
            "configs": list(configs), "dataset_info": list(infos)}
    rows = "\n".join(f"| `{d}` | {'; '.join(f['licenses']) or 'unknown'} | {'; '.join(f['sources'])} | "
                     + ", ".join(f"{s} {f['splits'][s]}" for s in schema.SPLITS if s in f["splits"]) + " |"
                     for d, f in facts.items())
    return (f"---\n{yaml.dump(meta, Dumper=CardDumper, sort_keys=False, allow_unicode=True)}---\n\n"
            "# handloom hand shards\n\n"
            "Written by the `shard` stage of handloom: WebDataset tars of square hand crops (`.jpg`), masks "
            "(`.mask.png`), 42x3 keypoints (`.kpts.npy`: rows 0-20 right hand, 21-41 left, columns x, y, "
            "confidence) and metadata (`.json`). Load every dataset with `datasets.load_dataset(\"<this folder>\")`, "
            "one with `load_dataset(\"<this folder>\", \"<dataset>\")`.\n\n"
            "Each dataset keeps its own license; the `license` field of every sample's `.json` repeats it.\n\n"
            "| dataset | license | source | samples |\n|---|---|---|---|\n" + rows + "\n")


def write_card(out_dir: Path, shards: dict[str, list[str]]) -> None:
    """The card for the shards of every dataset (name -> its tar names), written beside them."""
    facts = {d: dataset_facts(out_dir, d, names) for d, names in sorted(shards.items())}
    write_bytes(out_dir / schema.CARD_FILE, card_text(facts).encode())
