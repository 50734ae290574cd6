"""A corpus of bad inputs, built here, each run through the real code that meets it: ingest (images and annotation
JSON, on a copy of the FreiHAND sample files), annotate (keypoint arrays in a manifest written by other tools),
dataset sources (archives and checksums, through the ingest stage's params) and params.yaml. Each gets a named reject
reason or a clear error, and a stage that meets a bad record goes on with the good ones.

CASES is the one list; benchmarks/README.md ("Reliability") reports how many were tried and handled.
"""
import json
import re
import shutil
import struct
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from PIL import Image

from conftest import evil_tar, write_toy_dataset
from handloom import schema
from handloom.annotate.pipeline import annotate_dataset
from handloom.datasets.ingest import ingest
from handloom.datasets.store import read_manifest, read_rejects
from handloom.io import read_table, write_table
from handloom.params import AnnotateParams, FreiHANDParams, OneHand10KParams, ParamsError, load_params

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT.parent / "shared" / "data" / "hand_samples"
Reject = schema.Reject
pytestmark = pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/data/hand_samples is not beside the repo")


@dataclass(frozen=True)
class Case:
    path: str              # the code that meets it
    expect: tuple[str, ...]  # the reject reason, or what the error message must say; "accepted": read by content


CASES = {
    "truncated JPEG": Case("ingest", (Reject.UNREADABLE_IMAGE,)),
    "zero-byte image file": Case("ingest", (Reject.UNREADABLE_IMAGE,)),
    "PNG with a .jpg name": Case("ingest", ("accepted",)),  # decoded by its content, same pixels as the original
    "NaN coordinates in annotation JSON": Case("ingest", (Reject.NONFINITE_KEYPOINTS,)),
    "keypoints outside the image": Case("ingest", (Reject.KEYPOINTS_OUTSIDE_IMAGE,)),
    "JSON record without its keypoints field": Case("ingest", (Reject.MISSING_FIELD,)),
    "JSON record naming an unknown image": Case("ingest", (Reject.MISSING_FIELD,)),
    "wrong-size keypoint array in annotation JSON": Case("ingest", (Reject.BAD_KEYPOINT_SHAPE,)),
    "truncated annotation JSON file": Case("ingest", (Reject.TRUNCATED_ANNOTATION,)),
    "wrong-size keypoint array in a manifest": Case("annotate", (Reject.BAD_KEYPOINT_SHAPE,)),
    "inf coordinates in a manifest": Case("annotate", (Reject.NONFINITE_KEYPOINTS,)),
    "keypoints outside the image in a manifest": Case("annotate", (Reject.KEYPOINTS_OUTSIDE_IMAGE,)),
    "tar member with ../": Case("source", ("UnsafeArchiveError", "escapes the target folder")),
    "tar symlink member": Case("source", ("UnsafeArchiveError", "is a link")),
    "archive bomb (600 GB declared)": Case("source", ("UnsafeArchiveError", "over the limit of 549755813888")),
    "wrong checksum": Case("source", ("ChecksumError", "but params pin 0000")),
    # Not bad, but once refused as "a device or special file": a zip of modes without file type bits.
    "zip members with permission bits only": Case("source", ("accepted: 4 samples",)),
    "params.yaml with wrong types": Case("params", (
        "ingest.synthetic.n_frames: input should be a valid integer", "train.lr: input should be a valid number",
        "train.model: input should be a valid dictionary", "shard.jpeg_quality: input should be a valid integer")),
}


# --- ingest: images and annotation JSON ----------------------------------------------------------------------
def freihand_corpus(src: Path) -> dict[str, str]:
    """Spoil a copy of the FreiHAND samples, one record per case; the record id each case must come out under."""
    spoiled = {"truncated JPEG": 65475, "zero-byte image file": 82740, "PNG with a .jpg name": 98035,
               "NaN coordinates in annotation JSON": 355, "keypoints outside the image": 17620,
               "JSON record without its keypoints field": 32915, "JSON record naming an unknown image": 50180,
               "wrong-size keypoint array in annotation JSON": 115300}
    jpeg = src / "00065475.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:len(jpeg.read_bytes()) // 2])
    (src / "00082740.jpg").write_bytes(b"")
    Image.open(src / "00098035.jpg").save(src / "00098035.jpg", format="PNG")
    data = json.loads((src / "test_freihand.json").read_text())
    annotations = {a["image_id"]: a for a in data["annotations"]}
    annotations[355]["keypoints"][3] = float("nan")  # json writes NaN, as numpy-minded exporters do
    annotations[17620]["keypoints"][0] = 500.0       # the wrist's x, in a 224-pixel image
    del annotations[32915]["keypoints"]
    annotations[50180]["image_id"] = 999_999_999
    annotations[115300]["keypoints"] = annotations[115300]["keypoints"][:60]  # 20 joints
    (src / "test_freihand.json").write_text(json.dumps(data))
    # A second annotation file, cut mid-way: the whole file is one reject, the first file goes on.
    (src / "cut.json").write_text(json.dumps(data)[:5000])
    records = {case: f"test_freihand.json#{annotations[i]['id']}" for case, i in spoiled.items()}
    return records | {"truncated annotation JSON file": "cut.json"}


def outcomes(records: dict[str, str], accepted: list[str], rejects) -> dict[str, str]:
    """Per case, what became of its record: its reject reasons and/or `accepted`, one entry per row, or `lost`."""
    rows = {case: [*rejects.reason[rejects.key == r], *["accepted"] * accepted.count(r)] for case, r in records.items()}
    return {case: ",".join(found) or "lost" for case, found in rows.items()}


@pytest.fixture(scope="module")
def ingest_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ingest")
    src = shutil.copytree(SAMPLES / "freihand", tmp / "freihand")
    records = freihand_corpus(src)
    params = FreiHANDParams(source=str(src), annotations=("test_freihand.json", "cut.json"))
    ingest("freihand", params, tmp / "out")
    clean = FreiHANDParams(source=str(SAMPLES / "freihand"), annotations=("test_freihand.json",))
    ingest("freihand", clean, tmp / "clean")
    return records, *(read_manifest(tmp / d) for d in ("out", "clean")), read_rejects(tmp / "out")


@pytest.fixture(scope="module")
def ingest_outcomes(ingest_run):
    records, manifest, _, rejects = ingest_run
    return outcomes(records, [r for m in manifest.metadata for r in json.loads(m)["records"]], rejects)


def test_ingest_goes_on_with_the_good_records(ingest_run):
    records, manifest, clean, _ = ingest_run
    assert list(manifest.sequence) == ["00098035"]  # the PNG named .jpg: the one spoiled file still readable
    png_row, clean_row = (m.set_index("sequence").loc["00098035"] for m in (manifest, clean))
    assert png_row.image_sha256 == clean_row.image_sha256  # the same pixels, whatever the file's name says


# --- annotate: keypoint arrays in a manifest that ingest did not write -----------------------------------------
@pytest.fixture(scope="module")
def annotate_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("annotate")
    specs = [("train", "seq", f, "0") for f in range(5)]
    ingest_dir = write_toy_dataset(tmp, "toy", specs) / "ingest" / "toy"
    table = read_table(ingest_dir / schema.MANIFEST_FILE)
    keypoints = table.column("gt_keypoints").to_pylist()
    spoiled = {"wrong-size keypoint array in a manifest": 1, "inf coordinates in a manifest": 2,
               "keypoints outside the image in a manifest": 3}
    keypoints[1] = keypoints[1][:60]
    keypoints[2][0] = float("inf")
    keypoints[3][0] = -40.0
    loose = pa.list_(pa.float32())  # what a writer without handloom's schema makes: any length
    i = table.schema.get_field_index("gt_keypoints")
    write_table(ingest_dir / schema.MANIFEST_FILE, table.set_column(i, pa.field("gt_keypoints", loose),
                                                                     pa.array(keypoints, loose)))
    out = tmp / "annotations"
    params = AnnotateParams(workers=1, mask_backend="ground_truth", min_mask_area=0, cache_dir=str(tmp / "cache"))
    stats = annotate_dataset(ingest_dir, out, params)
    keys = table.column("key").to_pylist()
    records = {case: keys[i] for case, i in spoiled.items()}
    return records, read_table(out / schema.ANNOTATIONS_FILE).to_pandas(), read_rejects(out), stats, keys


@pytest.fixture(scope="module")
def annotate_outcomes(annotate_run):
    records, annotations, rejects, _, _ = annotate_run
    return outcomes(records, list(annotations.key), rejects)


def test_annotate_goes_on_with_the_good_rows(annotate_run):
    records, annotations, rejects, stats, keys = annotate_run
    assert list(annotations.key) == [keys[0], keys[4]]
    assert stats["images"] == 5 and stats["annotated"] == 2 and stats["rejected"] == 3


# --- dataset sources: archives and checksums, as the ingest stage meets them ----------------------------------
def forged_zip_bomb(path: Path, members: int = 150, declared: int = 0xFFFFFFF0) -> None:
    """Members that each declare ~4 GB in the central directory (which zipfile lists without reading any data),
    600 GB in all: over the default max_archive_gb of 512."""
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(members):
            zf.writestr(f"zeros{i}.bin", b"")
    data = bytearray(path.read_bytes())
    for m in re.finditer(rb"PK\x01\x02", data):  # central directory headers: uncompressed size at +24
        struct.pack_into("<I", data, m.start() + 24, declared)
    path.write_bytes(bytes(data))


def onehand10k_archive(path: Path) -> None:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(SAMPLES / "onehand10k", arcname="onehand10k")


def onehand10k_writestr_zip(path: Path) -> None:
    """Python's ZipFile.writestr stores mode 0o600 and no S_IFREG, as many zip writers do."""
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted((SAMPLES / "onehand10k").iterdir()):
            zf.writestr(f"onehand10k/{f.name}", f.read_bytes())


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sources")
    archives = {"tar member with ../": tmp / "slip.tar", "tar symlink member": tmp / "link.tar",
                "archive bomb (600 GB declared)": tmp / "bomb.zip", "wrong checksum": tmp / "onehand10k.tar.gz",
                "zip members with permission bits only": tmp / "onehand10k.zip"}
    evil_tar(archives["tar member with ../"], "onehand10k/../../escaped.txt")
    evil_tar(archives["tar symlink member"], "onehand10k/9.jpg", tarfile.SYMTYPE)
    forged_zip_bomb(archives["archive bomb (600 GB declared)"])
    onehand10k_archive(archives["wrong checksum"])
    onehand10k_writestr_zip(archives["zip members with permission bits only"])
    outcomes = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HANDLOOM_CACHE_DIR", str(tmp / "cache"))
        for case, archive in archives.items():
            sha = "0" * 64 if case == "wrong checksum" else None
            params = OneHand10KParams(source=str(archive), sha256=sha, annotations=("test_onehand10k.json",))
            try:
                writer = ingest("onehand10k", params, tmp / case)
                outcomes[case] = f"accepted: {writer.n_samples} samples"
            except Exception as e:  # the error, as the stage would print it
                outcomes[case] = f"{type(e).__name__}: {e}"
    return outcomes, tmp


@pytest.fixture(scope="module")
def source_outcomes(source_run):
    return source_run[0]


def test_refused_archives_leave_nothing_behind(source_run):
    source_outcomes, tmp = source_run
    refused = [case for case in source_outcomes if not source_outcomes[case].startswith("accepted")]
    assert refused and not any((tmp / case).exists() for case in refused)  # no partial dataset written
    assert not list(tmp.rglob("escaped.txt"))
    assert len(list((tmp / "cache").rglob("tree"))) == len(source_outcomes) - len(refused)  # extracted: the good one


# --- params.yaml -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def params_outcomes(tmp_path_factory):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ingest"]["synthetic"]["n_frames"] = "six"
    params["train"]["lr"] = [0.0003]
    params["train"]["model"] = 4
    params["shard"]["jpeg_quality"] = 95.5
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError) as e:
        load_params(path)
    return {"params.yaml with wrong types": str(e.value)}


# --- The corpus, case by case ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_a_named_reason_or_a_clear_error(request, case):
    """A record's outcome is exactly its reason (one row, not also accepted); an error's message says the reason."""
    path, expect = CASES[case].path, CASES[case].expect
    got = request.getfixturevalue(f"{path}_outcomes")[case]
    if path in ("ingest", "annotate"):
        assert got == expect[0], case
    else:
        assert all(part in got for part in expect), f"{case}: {got}"


def test_benchmarks_readme_reports_the_corpus():
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    assert f"{len(CASES)} cases tried, {len(CASES)} handled" in readme
