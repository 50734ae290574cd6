"""Property-based fuzzing (hypothesis) of every adapter's real sample annotations and of `handloom generate`'s pair
tables: whatever the mutation (types swapped, nulls, lists for scalars, missing and extra keys, huge numbers, odd
strings), the stage finishes, every record lands in the samples or the rejects, and nothing is read or written
outside the dataset and output folders. Bounded and derandomised in the default run; `-m slow` draws many more.
"""
import copy
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from audit import outside, watching
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handloom.datasets.ingest import ingest
from handloom.datasets.samples import sample_params
from handloom.datasets.store import read_manifest, read_rejects
from handloom.generate import GenerateError, parquet_pairs

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT.parent / "shared" / "data" / "hand_samples"
pytestmark = pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/data/hand_samples is not beside the repo")

FAST, SLOW = 6, 150  # examples per adapter: the default run's fuzz stays well under a minute on 2 cores
ODD = st.sampled_from([None, True, -1, 0, 2**70, 1e308, float("nan"), "", "../../../../etc/passwd", "/etc/passwd",
                       "caf\udce9.jpg", "x" * 300, "a/./b", [], [1, 2], {}, {"id": 1}, "0", [[1, 2, 3]] * 21])


def nodes(value, path=()):
    """Every (path, value) in a JSON document: the places a mutation can hit."""
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from nodes(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:8]):  # the first entries are enough: they are all alike
            yield from nodes(v, (*path, i))


@st.composite
def mutated(draw, document):
    """`document` with 1-4 mutations: a value replaced by an odd one, a key deleted, a key added, a value wrapped in
    a list."""
    doc = json.loads(json.dumps(document))
    for _ in range(draw(st.integers(1, 4))):
        places = [p for p, _ in nodes(doc) if p]
        if not places:  # everything deleted already
            break
        path = draw(st.sampled_from(places))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        leaf, op = path[-1], draw(st.sampled_from(["replace", "delete", "extra", "wrap"]))
        if op == "replace":
            parent[leaf] = copy.deepcopy(draw(ODD))  # never the shared constant: later mutations would change it
        elif op == "delete" and isinstance(parent, dict):
            del parent[leaf]
        elif op == "extra" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["extra", "id", "file_name", "image_id", "width"]))] = copy.deepcopy(draw(ODD))
        else:
            parent[leaf] = [parent[leaf]]
    return doc


# Per adapter: the annotation file(s) fuzzed, relative to the sample folder, and how to list its records.
def coco_records(doc, name):
    """Record ids the COCO-style readers give: `<file>#<id or index>` per entry of `annotations`."""
    items = doc.get("annotations") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        return None  # the file itself is rejected
    ids = [a.get("id") if isinstance(a, dict) and isinstance(a.get("id"), (str, int)) and
           not isinstance(a.get("id"), bool) else n for n, a in enumerate(items)]
    return {f"{name}#{i}" for i in ids}


def wholebody_records(doc, name):
    items = doc.get("annotations") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        return None
    found = set()
    for n, a in enumerate(items):
        own = a.get("id") if isinstance(a, dict) else None
        rid = f"{name}#{own if isinstance(own, (str, int)) and not isinstance(own, bool) else n}"
        if not isinstance(a, dict) or a.get("righthand_valid") or a.get("lefthand_valid"):
            found.add(rid)  # a person without a valid hand has nothing to ingest, by design
    return found


def hagrid_records(doc, name):
    return {f"{name}#{uuid}" for uuid in doc} if isinstance(doc, dict) else None


ADAPTERS = {
    "freihand": ("test_freihand.json", coco_records),
    "onehand10k": ("test_onehand10k.json", coco_records),
    "rhd": ("test_rhd.json", coco_records),
    "panoptic": ("test_panoptic.json", coco_records),
    "coco_wholebody": ("test_coco_wholebody.json", wholebody_records),
    "interhand": ("test_interhand2.6m_data.json", coco_records),
    "hagrid": ("annotations/test/call.json", hagrid_records),
}


def accounted(expected: set[str], manifest, rejects, file_name: str) -> list[str]:
    """The expected records that are neither in a sample nor in a reject row (a hand's id is `<record>/...`)."""
    seen = [r for m in manifest.metadata for r in json.loads(m)["records"]] + list(rejects.key)
    if file_name in set(rejects.key):
        return []  # the whole file was rejected, by name
    return [e for e in expected if not any(s == e or s.startswith(f"{e}/") for s in seen)]


def fuzz_adapter(name: str, tmp: Path, examples: int) -> None:
    params = sample_params(SAMPLES)[name]
    src = shutil.copytree(params.source, tmp / "data" / name)
    params = params.model_copy(update={"source": str(src)})
    file_name, records = ADAPTERS[name]
    original = json.loads((src / file_name).read_text())
    out = tmp / "out" / name

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(mutated(original))
    def run(doc):
        (src / file_name).write_text(json.dumps(doc))
        with watching() as touched:
            ingest(name, params, out)  # must not raise
        manifest, rejects = read_manifest(out), read_rejects(out)
        expected = records(doc, file_name)
        if expected is None:
            assert file_name in set(rejects.key)
        else:
            assert not accounted(expected, manifest, rejects, file_name)
        assert not outside(touched, src, tmp / "out")

    run()


@pytest.mark.parametrize("name", ADAPTERS)
def test_fuzzed_annotations_never_stop_an_adapter(tmp_path, name):
    fuzz_adapter(name, tmp_path, FAST)


@pytest.mark.slow
@pytest.mark.fuzz_long  # out of CI: in the full slow run its FreiHAND case failed where it passes alone (open)
@pytest.mark.parametrize("name", ADAPTERS)
def test_fuzzed_annotations_never_stop_an_adapter_many(tmp_path, name):
    fuzz_adapter(name, tmp_path, SLOW)


# --- `handloom generate`: pair tables --------------------------------------------------------------------------------
CELL = st.one_of(ODD, st.sampled_from(["r.png", "t.npy", "a.png", "sub/b.png", "pose", "view", 3, 2**63]))
COLUMNS = ["reference", "target", "mode", "seed", "reference_keypoints", "output"]


def fuzz_pairs(tmp: Path, examples: int) -> None:
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(st.lists(st.fixed_dictionaries({c: CELL for c in COLUMNS}), min_size=1, max_size=4),
           st.sets(st.sampled_from(COLUMNS[2:])))
    def run(rows, dropped):
        path = tmp / "pairs.parquet"
        try:
            pd.DataFrame([{k: v for k, v in row.items() if k not in dropped} for row in rows]).to_parquet(path)
        except Exception:  # noqa: BLE001 - pyarrow cannot store this mix of types: not a table anyone can give
            return
        out = tmp / "out"
        try:
            pairs = parquet_pairs(path, out)
        except GenerateError:
            return  # refused by name, before anything is written
        outputs = [p.output for p in pairs]
        assert len(set(outputs)) == len(outputs)
        assert all(out.resolve() in p.resolve().parents and p.suffix == ".png" for p in outputs)

    run()


def test_fuzzed_pair_tables_are_planned_or_refused(tmp_path):
    fuzz_pairs(tmp_path, 40)


@pytest.mark.slow
def test_fuzzed_pair_tables_many(tmp_path):
    fuzz_pairs(tmp_path, 1000)
