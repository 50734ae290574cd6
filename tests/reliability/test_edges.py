"""Bad input at the edges (issue #20): the classes of input that once crashed a stage, corrupted samples without a
word, or reached outside a folder, each case run through the real code that meets it. CASES names every case and
its class; benchmarks/README.md ("Reliability") reports the count. The property-based fuzzing is in test_fuzz.py.
"""
import io
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from audit import outside, watching
from PIL import Image

from conftest import TOY_SPECS, evil_tar, tiny_checkpoint_in, toy_keypoints, write_toy_dataset
from handloom import schema
from handloom.cli import main as handloom_main
from handloom.datasets import store
from handloom.datasets.ingest import ingest
from handloom.datasets.sources import UnsafeArchiveError, resolve_source
from handloom.datasets.store import read_manifest, read_rejects
from handloom.errors import exit_code
from handloom.generate import GenerateError, folder_pairs, parquet_pairs
from handloom.io import encode_png, read_image_file, read_picture
from handloom.orchestrate.overrides import apply_overrides
from handloom.params import (
    COCOWholeBodyParams,
    FreiHANDParams,
    HaGRIDParams,
    InterHandParams,
    OneHand10KParams,
    ParamsError,
    load_params,
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT.parent / "shared" / "data" / "hand_samples"
Reject = schema.Reject
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/data/hand_samples is not beside the repo")

PIXELS = "pixels and keypoints agree"
RECORD = "one malformed record costs only itself"
PATHS = "nothing escapes its folder"
ARCHIVES = "archives and concurrency"
PARAMS = "parameters that cannot work are refused"
ERRORS = "errors are one line, not tracebacks"
STATS = "statistics do not depend on the progress bar"

# --- ingest: a copy of the FreiHAND samples with one spoiled record per case -------------------------------------
# case -> (class, expected outcome of its record: a reject reason, or "accepted")
INGEST = {
    "EXIF orientation 6, keypoints in the displayed frame": (PIXELS, "accepted"),
    "EXIF orientation 6, keypoints in the stored frame": (PIXELS, "accepted"),
    "EXIF orientation 3 (upside down)": (PIXELS, "accepted"),
    "16-bit grayscale PNG": (PIXELS, "accepted"),
    "16-bit RGB PNG": (PIXELS, "accepted"),
    "RGBA PNG with a transparent background": (PIXELS, "accepted"),
    "palette PNG with a transparent colour": (PIXELS, "accepted"),
    "floating-point TIFF": (PIXELS, Reject.UNREADABLE_IMAGE),
    "two images[] entries with one id": (PIXELS, Reject.DUPLICATE_ID),
    "two annotations with one id": (PIXELS, f"{Reject.DUPLICATE_ID},{Reject.DUPLICATE_ID}"),
    "image_id a list": (RECORD, Reject.MISSING_FIELD),
    "annotation entry a string": (RECORD, Reject.BAD_RECORD),
    "keypoints an object": (RECORD, Reject.BAD_KEYPOINT_SHAPE),
    "keypoints of strings": (RECORD, Reject.BAD_KEYPOINT_SHAPE),
    "width a string": (RECORD, Reject.IMAGE_SIZE_MISMATCH),
    "file_name null": (RECORD, Reject.MISSING_FIELD),
    "300-character file name": (RECORD, Reject.MISSING_IMAGE),
    "non-UTF-8 file name": (RECORD, Reject.MISSING_IMAGE),
    "coordinates of 1e308": (RECORD, Reject.NONFINITE_KEYPOINTS),  # past float32: inf
    "every joint invisible": (RECORD, Reject.NO_HAND),
    "file_name ../outside/outside.jpg": (PATHS, Reject.PATH_OUTSIDE_DATASET),
    "absolute file_name": (PATHS, Reject.PATH_OUTSIDE_DATASET),
    "symlink to an image outside the dataset": (PATHS, Reject.PATH_OUTSIDE_DATASET),
}
BASE = 17620  # the FreiHAND sample every spoiled record is made from (224 x 224, a right hand)


def exif(orientation: int) -> Image.Exif:
    e = Image.Exif()
    e[0x0112] = orientation
    return e


def rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def spoil_freihand(src: Path, outside_dir: Path) -> dict[str, str]:
    """Add one record per INGEST case to a copy of the FreiHAND samples; case -> its record id."""
    data = json.loads((src / "test_freihand.json").read_text())
    base_image = next(i for i in data["images"] if i["id"] == BASE)
    base_ann = next(a for a in data["annotations"] if a["id"] == BASE)
    display = rgb(src / base_image["file_name"])
    tall = np.concatenate([display, np.full((76, 224, 3), 40, np.uint8)])  # 224 x 300: rotations change its size
    ids = {}

    def add(case: str, image: dict | None = None, annotation=None, pixels=None, save=None):
        n = 900_000 + len(ids)
        name = f"{n}.png"
        entry = dict(base_image, id=n, file_name=name) | (image or {})
        ann = dict(base_ann, id=n, image_id=n) if annotation is None else annotation
        if isinstance(ann, dict):
            ann = {k: v for k, v in ann.items()}
        data["images"].append(entry)
        data["annotations"].append(ann)
        if save is not None:
            save(src / name)
        elif pixels is not None:
            Image.fromarray(pixels).save(src / name)
        ids[case] = f"test_freihand.json#{n if not isinstance(ann, dict) or 'id' not in ann else ann['id']}"
        return entry, ann

    # A control record: the tall image as stored, no EXIF; the rotated ones must come out the same.
    add("control: tall image", {"height": 300}, pixels=tall)
    stored = np.ascontiguousarray(np.rot90(tall))  # 300 x 224 stored; orientation 6 turns it back upright
    add("EXIF orientation 6, keypoints in the displayed frame", {"height": 300, "file_name": "o6.jpg"},
        save=lambda p: Image.fromarray(stored).save(src / "o6.jpg", quality=100, exif=exif(6)))
    k = np.asarray(base_ann["keypoints"], np.float64).reshape(21, 3)
    k_stored = k.copy()
    k_stored[:, 0], k_stored[:, 1] = k[:, 1], 223 - k[:, 0]  # the inverse of Picture.from_stored for 6
    stored_entry = {"width": 300, "height": 224, "file_name": "s6.jpg"}
    _, ann = add("EXIF orientation 6, keypoints in the stored frame", stored_entry,
                 save=lambda p: shutil.copy(src / "o6.jpg", src / "s6.jpg"))
    ann["keypoints"] = k_stored.ravel().tolist()
    add("control: tall image as JPEG", {"height": 300, "file_name": "tall.jpg"},
        save=lambda p: Image.fromarray(tall).save(src / "tall.jpg", quality=100))
    add("EXIF orientation 3 (upside down)", {"file_name": "o3.jpg"},
        save=lambda p: Image.fromarray(np.ascontiguousarray(display[::-1, ::-1])).save(src / "o3.jpg", quality=100,
                                                                                       exif=exif(3)))
    gray = cv2.cvtColor(display, cv2.COLOR_RGB2GRAY)
    add("16-bit grayscale PNG", save=lambda p: cv2.imwrite(str(p), gray.astype(np.uint16) * 257))
    bgr16 = cv2.cvtColor(display, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257
    add("16-bit RGB PNG", save=lambda p: cv2.imwrite(str(p), bgr16))
    alpha = np.full((224, 224), 255, np.uint8)
    alpha[:, :40] = 0  # a transparent band at the left, away from the hand
    add("RGBA PNG with a transparent background", pixels=np.dstack([display, alpha]))
    add("palette PNG with a transparent colour",
        save=lambda p: Image.fromarray(display).convert("P", palette=Image.Palette.ADAPTIVE).save(p, transparency=0))
    add("floating-point TIFF", {"file_name": "f.tiff"},
        save=lambda p: Image.fromarray(gray.astype(np.float32)).save(src / "f.tiff"))
    entry, _ = add("two images[] entries with one id", pixels=display)
    data["images"].append(dict(entry, file_name="00000355.jpg"))  # the same id, another photo
    _, ann = add("two annotations with one id", pixels=display)
    data["annotations"].append(dict(ann))
    _, ann = add("image_id a list", pixels=display)
    ann["image_id"] = [ann["image_id"]]
    add("annotation entry a string", annotation="not an annotation", pixels=display)
    ids["annotation entry a string"] = f"test_freihand.json#{len(data['annotations']) - 1}"
    _, ann = add("keypoints an object", pixels=display)
    ann["keypoints"] = {"x": 1}
    _, ann = add("keypoints of strings", pixels=display)
    ann["keypoints"] = ["a"] * 63
    add("width a string", {"width": "224"}, pixels=display)
    add("file_name null", {"file_name": None})
    add("300-character file name", {"file_name": "x" * 300 + ".jpg"})
    add("non-UTF-8 file name", {"file_name": "caf\udce9.jpg"})  # what json.loads makes of a Latin-1 name escaped
    _, ann = add("coordinates of 1e308", pixels=display)
    ann["keypoints"] = [1e308] * 63
    _, ann = add("every joint invisible", pixels=display)
    ann["keypoints"] = [v if i % 3 != 2 else 0 for i, v in enumerate(ann["keypoints"])]
    Image.fromarray(display).save(outside_dir / "outside.jpg")
    add("file_name ../outside/outside.jpg", {"file_name": "../outside/outside.jpg"})
    add("absolute file_name", {"file_name": str(outside_dir / "outside.jpg")})
    (src / "link.jpg").symlink_to(outside_dir / "outside.jpg")
    add("symlink to an image outside the dataset", {"file_name": "link.jpg"})
    (src / "test_freihand.json").write_text(json.dumps(data))
    return ids


@pytest.fixture(scope="module")
def freihand_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("edges")
    src = shutil.copytree(SAMPLES / "freihand", tmp / "data" / "freihand")
    (tmp / "data" / "outside").mkdir()
    ids = spoil_freihand(src, tmp / "data" / "outside")
    params = FreiHANDParams(source=str(src), annotations=("test_freihand.json",))
    with watching() as touched:
        ingest("freihand", params, tmp / "out" / "freihand")
    manifest, rejects = read_manifest(tmp / "out" / "freihand"), read_rejects(tmp / "out" / "freihand")
    return ids, manifest, rejects, touched, tmp


def outcome(record_id: str, manifest, rejects) -> str:
    """What became of a record (or of its hands, `<id>/<side>`): its reject reasons and/or `accepted`, or `lost`."""
    def ours(key: str) -> bool:
        return key == record_id or key.startswith(f"{record_id}/")

    accepted = sum(ours(r) for m in manifest.metadata for r in json.loads(m)["records"])
    return ",".join([*rejects.reason[rejects.key.map(ours)], *["accepted"] * accepted]) or "lost"


def sample(manifest, record_id: str):
    row = next(r for r in manifest.itertuples() if record_id in json.loads(r.metadata)["records"])
    return row, store.keypoints_array(row.gt_keypoints)


def crop(out: Path, key: str) -> np.ndarray:
    jpeg = next(j for k, j, _ in store.iter_images(out) if k == key)
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@needs_samples
@pytest.mark.parametrize("case", INGEST)
def test_ingest_case(freihand_run, case):
    ids, manifest, rejects, _, _ = freihand_run
    assert outcome(ids[case], manifest, rejects) == INGEST[case][1]


@needs_samples
def test_rotated_images_keep_their_keypoints_on_the_hand(freihand_run):
    """Both EXIF cases give the control's crop: same keypoints (to float precision), same pixels (to JPEG noise)."""
    ids, manifest, _, _, tmp = freihand_run
    control_row, control_k = sample(manifest, ids["control: tall image as JPEG"])
    for case in ("EXIF orientation 6, keypoints in the displayed frame",
                 "EXIF orientation 6, keypoints in the stored frame"):
        row, k = sample(manifest, ids[case])
        np.testing.assert_allclose(k, control_k, atol=1e-3)
        diff = np.abs(crop(tmp / "out/freihand", row.key).astype(int) - crop(tmp / "out/freihand", control_row.key))
        assert diff.mean() < 2, case
        meta = json.loads(row.metadata)
        assert meta["exif_orientation"] == 6
        assert meta["annotation_frame"] == ("stored" if "stored" in case else "displayed")


@needs_samples
def test_high_bit_depth_and_alpha_follow_the_policy(freihand_run):
    ids, manifest, _, _, tmp = freihand_run
    out = tmp / "out/freihand"
    plain_row, _ = sample(manifest, f"test_freihand.json#{BASE}")
    plain = crop(out, plain_row.key).astype(int)
    gray16 = crop(out, sample(manifest, ids["16-bit grayscale PNG"])[0].key).astype(int)
    assert abs(gray16.mean() - plain.mean()) < 10 and gray16.mean() < 200  # not the all-white crop of old
    rgb16 = crop(out, sample(manifest, ids["16-bit RGB PNG"])[0].key).astype(int)
    assert np.abs(rgb16 - plain).mean() < 2
    row, _ = sample(manifest, ids["RGBA PNG with a transparent background"])
    assert json.loads(row.metadata)["alpha"] == "composited over black"


@needs_samples
def test_nothing_outside_the_dataset_is_opened(freihand_run):
    _, _, _, touched, tmp = freihand_run
    assert not outside(touched, tmp / "data" / "freihand", tmp / "out")
    assert not [p for _, p in touched if "outside.jpg" in p and "link.jpg" not in p]


# --- ingest: file-level and per-adapter cases -------------------------------------------------------------------
ADAPTERS = {
    "COCO-style file whose annotations are null": (RECORD, Reject.CORRUPT_ANNOTATION),
    "COCO-style file whose top level is a list": (RECORD, Reject.CORRUPT_ANNOTATION),
    "HaGRID bboxes null": (RECORD, Reject.MISSING_FIELD),
    "HaGRID bboxes empty": (RECORD, Reject.NO_HAND),
    "HaGRID image id with ../": (PATHS, Reject.PATH_OUTSIDE_DATASET),
    "InterHand2.6M image without file_name": (RECORD, Reject.BAD_RECORD),
    "InterHand2.6M negative frame_idx": (RECORD, f"{Reject.BAD_RECORD},{Reject.BAD_RECORD}"),  # both hands
    "COCO-WholeBody hand keypoints null": (RECORD, Reject.BAD_KEYPOINT_SHAPE),
    "COCO-WholeBody person a number": (RECORD, Reject.BAD_RECORD),
}


@pytest.fixture(scope="module")
def adapter_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapters")
    results = {}
    # OneHand10K: a good file, and two broken copies of it beside it.
    src = shutil.copytree(SAMPLES / "onehand10k", tmp / "onehand10k")
    good = json.loads((src / "test_onehand10k.json").read_text())
    (src / "null.json").write_text(json.dumps(dict(good, annotations=None)))
    (src / "list.json").write_text(json.dumps([good]))
    ingest("onehand10k", OneHand10KParams(source=str(src), annotations=("test_onehand10k.json", "null.json",
                                                                        "list.json")), tmp / "out1")
    m, r = read_manifest(tmp / "out1"), read_rejects(tmp / "out1")
    results["COCO-style file whose annotations are null"] = (outcome("null.json", m, r), len(m))
    results["COCO-style file whose top level is a list"] = (outcome("list.json", m, r), len(m))
    # HaGRID
    src = shutil.copytree(SAMPLES / "hagrid", tmp / "hagrid")
    call = src / "annotations/test/call.json"
    data = json.loads(call.read_text())
    uuid, item = next(iter(data.items()))
    data["nulled"] = dict(item, bboxes=None)
    data["emptied"] = dict(item, bboxes=[], labels=[])
    data["../../../../escape"] = item
    call.write_text(json.dumps(data))
    ingest("hagrid", HaGRIDParams(source=str(src), annotations=("annotations/test",)), tmp / "out2")
    m, r = read_manifest(tmp / "out2"), read_rejects(tmp / "out2")
    results["HaGRID bboxes null"] = (outcome("annotations/test/call.json#nulled", m, r), len(m))
    results["HaGRID bboxes empty"] = (outcome("annotations/test/call.json#emptied", m, r), len(m))
    results["HaGRID image id with ../"] = (outcome("annotations/test/call.json#../../../../escape", m, r), len(m))
    # InterHand2.6M
    src = shutil.copytree(SAMPLES / "interhand2.6m", tmp / "interhand")
    path = src / "test_interhand2.6m_data.json"
    data = json.loads(path.read_text())
    for n, change in ((1, lambda i: i.pop("file_name")), (2, lambda i: i.update(frame_idx=-5))):
        image = dict(data["images"][0], id=f"x{n}")
        change(image)
        data["images"].append(image)
        data["annotations"].append(dict(data["annotations"][0], id=f"x{n}", image_id=f"x{n}"))
    path.write_text(json.dumps(data))
    joints_path = src / "test_interhand2.6m_joint_3d.json"
    joints = json.loads(joints_path.read_text())
    first = data["images"][0]
    joints[str(first["capture"])]["-5"] = joints[str(first["capture"])][str(first["frame_idx"])]
    joints_path.write_text(json.dumps(joints))
    ingest("interhand", InterHandParams(source=str(src), images_dir="", annotations=(path.name,)), tmp / "out3")
    m, r = read_manifest(tmp / "out3"), read_rejects(tmp / "out3")
    results["InterHand2.6M image without file_name"] = (outcome(f"{path.name}#x1", m, r), len(m))
    results["InterHand2.6M negative frame_idx"] = (outcome(f"{path.name}#x2", m, r), len(m))
    # COCO-WholeBody
    src = shutil.copytree(SAMPLES / "coco_wholebody", tmp / "coco_wholebody")
    path = src / "test_coco_wholebody.json"
    data = json.loads(path.read_text())
    person = next(p for p in data["annotations"] if p.get("righthand_valid"))
    data["annotations"].append(dict(person, id="nulled", righthand_kpts=None))
    data["annotations"].append(7)
    path.write_text(json.dumps(data))
    ingest("coco_wholebody", COCOWholeBodyParams(source=str(src), images_dir="", annotations=(path.name,)), tmp / "o4")
    m, r = read_manifest(tmp / "o4"), read_rejects(tmp / "o4")
    results["COCO-WholeBody hand keypoints null"] = (outcome(f"{path.name}#nulled/right", m, r), len(m))
    results["COCO-WholeBody person a number"] = (outcome(f"{path.name}#{len(data['annotations']) - 1}", m, r), len(m))
    return results


@needs_samples
@pytest.mark.parametrize("case", ADAPTERS)
def test_adapter_case(adapter_runs, case):
    got, samples = adapter_runs[case]
    assert got == ADAPTERS[case][1]
    assert samples > 0  # the good records of the run went on


# --- ingest: the output set is swapped in whole -------------------------------------------------------------------
def test_a_crash_while_writing_leaves_the_previous_set(tmp_path, monkeypatch):
    """A fault injected into the last table written: the folder keeps the previous run's manifest and parts."""
    root = write_toy_dataset(tmp_path, "toy", TOY_SPECS)
    out = root / "ingest" / "toy"
    before = {f.relative_to(out): f.read_bytes() for f in out.rglob("*") if f.is_file()}
    writer = store.DatasetWriter(out, "toy", license="test", source="test")
    rng = np.random.default_rng(1)
    writer.add(schema.SampleKey("toy", "train", "other", 0, "0"), rng.integers(0, 255, (64, 64, 3), np.uint8),
               toy_keypoints(rng, 64), (0, 0, 64, 64), {})
    real = store.write_table

    def failing(path, table, **options):
        if Path(path).name == schema.REJECTS_FILE:  # the last table the writer writes
            raise OSError("disk full (injected)")
        return real(path, table, **options)

    monkeypatch.setattr(store, "write_table", failing)
    with pytest.raises(OSError, match="injected"):
        writer.write()
    after = {f.relative_to(out): f.read_bytes() for f in out.rglob("*") if f.is_file()}
    assert after == before


CASES_CONSISTENT = {"a crash while writing the dataset": RECORD}


# --- generate: where the outputs go -------------------------------------------------------------------------------
def pair_table(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "pairs.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


PAIR_TABLES = {
    "pairs output ../x.png": (PATHS, [dict(output="../x.png")], "outside --out"),
    "pairs output an absolute path": (PATHS, [dict(output="/tmp/handloom-x.png")], "outside --out"),
    "two pair rows with one output": (PATHS, [dict(output="a.png"), dict(output="a.png")], "row 0 and row 1 both"),
    "pairs output not a PNG": (PATHS, [dict(output="a.jpg")], "must be a .png"),
    "pairs row with an unknown mode": (ERRORS, [dict(mode="side")], "row 0: mode must be one of"),
    "pairs row with a seed that is not a number": (ERRORS, [dict(seed="abc")], "row 0: seed must be"),
    "pairs row with a negative seed": (ERRORS, [dict(seed=-1)], "row 0: seed must be"),
    "pairs row without a reference": (ERRORS, [dict(reference=None)], "row 0: reference must be a file path"),
}


@pytest.mark.parametrize("case", PAIR_TABLES)
def test_pair_table_case(tmp_path, case):
    _, rows, message = PAIR_TABLES[case]
    rows = [dict(dict(reference="r.png", target="t.npy"), **row) for row in rows]
    with pytest.raises(GenerateError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parquet_pairs(pair_table(tmp_path, rows), tmp_path / "out")


def test_pairs_file_that_is_not_parquet(tmp_path):
    (tmp_path / "pairs.parquet").write_text("reference,target\n")
    with pytest.raises(GenerateError, match="not a Parquet table"):
        parquet_pairs(tmp_path / "pairs.parquet", tmp_path / "out")


def test_two_references_that_write_one_file(tmp_path):
    for name in ("a.jpg", "a.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    np.save(tmp_path / "t.npy", np.zeros((42, 3), np.float32))
    with pytest.raises(GenerateError, match="reference a.jpg and reference a.png both write a.png"):
        folder_pairs(tmp_path, tmp_path / "t.npy", tmp_path / "out")


# --- archives and concurrency ---------------------------------------------------------------------------------------
def tar_of(path: Path, members: list[tuple[str, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE if data is None else tarfile.REGTYPE
            info.size = 0 if data is None else len(data)
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return path


ARCHIVE_CASES = {
    "tar member a file, then a folder of that name": (
        lambda p: tar_of(p / "a.tar", [("d/x", b"1"), ("d/x/y", b"2")]), "is both a file and a folder"),
    "tar member x/./": (lambda p: tar_of(p / "a.tar", [("d/", None), ("d/x/./", b"1")]), "a file with a folder's name"),
    "zip member a file, then a folder of that name": (
        lambda p: _zip(p / "a.zip", ["d/x", "d/x/y"]), "is both a file and a folder"),
}


def _zip(path: Path, names: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name in names:
            zf.writestr(name, b"1")
    return path


@pytest.mark.parametrize("case", ARCHIVE_CASES)
def test_archive_case(tmp_path, case):
    make, message = ARCHIVE_CASES[case]
    archive = make(tmp_path)
    with pytest.raises(UnsafeArchiveError, match=message):
        resolve_source(str(archive), cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("x"))  # nothing extracted


def _resolve(args):
    archive, cache = args
    return str(resolve_source(archive, cache_dir=cache))


@needs_samples
def test_two_processes_resolving_one_archive_at_once(tmp_path):
    """Old code: both extract, and the second rename fails with `Directory not empty`. Now one waits."""
    archive = tmp_path / "onehand10k.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(SAMPLES / "onehand10k", arcname="onehand10k")
        for i in range(200):  # enough members that both extractions overlap
            info = tarfile.TarInfo(f"onehand10k/pad/{i}.bin")
            info.size = 20_000
            tar.addfile(info, io.BytesIO(bytes(20_000)))
    with multiprocessing.get_context("fork").Pool(2) as pool:
        trees = pool.map(_resolve, [(str(archive), str(tmp_path / "cache"))] * 2)
    assert trees[0] == trees[1] and (Path(trees[0]) / "test_onehand10k.json").is_file()


# --- params ---------------------------------------------------------------------------------------------------------
PARAMS_CASES = {
    "hidden_size not a multiple of num_heads": ({"train": {"model": {"hidden_size": 130, "num_heads": 4}}},
                                                 "train.model: hidden_size 130 must be a multiple of num_heads 4"),
    "resolution not a multiple of patch_size": ({"train": {"resolution": 66}},
                                                "train: resolution 66 must be a multiple of model.patch_size 4"),
    "synthetic image_size of 200000": ({"ingest": {"synthetic": {"image_size": 200000}}},
                                       "ingest.synthetic.image_size: must be ≤ 8192"),
    "shard crop_size of 100000": ({"shard": {"crop_size": 100000}}, "shard.crop_size: must be ≤ 8192"),
    "learning rate .inf": ({"train": {"lr": float("inf")}}, "train.lr: input should be a finite number"),
    "guidance scale .inf": ({"evaluate": {"appearance_scale": float("inf")}},
                            "evaluate.appearance_scale: input should be a finite number"),
    "heatmap sigma .nan": ({"train": {"heatmap_sigma": float("nan")}},
                           "train.heatmap_sigma: input should be a finite number"),
    "augment gamma .inf": ({"train": {"augment": {"gamma": [0.8, float("inf")]}}},
                           "train.augment.gamma.1: input should be a finite number"),
}


def deep_update(base: dict, changes: dict) -> dict:
    for key, value in changes.items():
        base[key] = deep_update(base.get(key) or {}, value) if isinstance(value, dict) else value
    return base


@pytest.mark.parametrize("case", PARAMS_CASES)
def test_params_case(tmp_path, case):
    changes, message = PARAMS_CASES[case]
    params = deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), changes)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError) as e:
        load_params(path)
    assert message in str(e.value)


def test_duplicate_key_in_params_yaml(tmp_path):
    text = (ROOT / "params.yaml").read_text().replace("train:\n", "train:\n  lr: 0.5\n", 1)
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ParamsError, match="duplicate key 'lr'"):
        load_params(tmp_path / "params.yaml")


OVERRIDES = {
    "flow override replacing a whole section": ({"train": 5}, "would replace the whole section"),
    "flow override with a value out of range": ({"train.lr": -1.0}, "train.lr: must be > 0"),
    "flow override making heads not divide hidden_size": ({"train.model.num_heads": 3},
                                                          "hidden_size 128 must be a multiple of num_heads 3"),
}


@pytest.mark.parametrize("case", OVERRIDES)
def test_flow_override_is_validated_before_the_file_is_touched(tmp_path, case):
    overrides, message = OVERRIDES[case]
    path = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", path)
    before = path.read_bytes()
    with pytest.raises(ParamsError, match=message):
        apply_overrides(path, overrides)
    assert path.read_bytes() == before  # comments, order, every line


# --- errors: the `handloom` command ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint_in(tmp_path_factory.mktemp("ckpt"), max_steps=1)


@pytest.fixture
def cli_inputs(tmp_path, tiny_checkpoint, monkeypatch):
    """A reference, its keypoints, a pose target and spoiled checkpoints; run where no params.yaml is."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    (tmp_path / "ref.png").write_bytes(encode_png(rng.integers(0, 256, (40, 40, 3), np.uint8)))
    np.save(tmp_path / "ref.npy", toy_keypoints(rng, 40))
    np.save(tmp_path / "pose.npy", toy_keypoints(rng, 40))
    data = tiny_checkpoint.read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[:len(data) // 2])
    (tmp_path / "empty.ckpt").write_bytes(b"")
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "hyper_parameters"}, tmp_path / "nohp.ckpt")
    train = dict(state["hyper_parameters"]["train"], shiny_new_option=1)
    torch.save(dict(state, hyper_parameters=dict(state["hyper_parameters"], train=train)), tmp_path / "unknown.ckpt")
    weights = dict(state["state_dict"])
    weights.pop(next(iter(weights)))
    torch.save(dict(state, state_dict=weights), tmp_path / "mismatched.ckpt")
    (tmp_path / "w0.json").write_text(json.dumps({"keypoints": toy_keypoints(rng, 40).tolist(), "width": 0,
                                                  "height": 40}))
    (tmp_path / "words.json").write_text(json.dumps([["a", "b", "c"]] * 42))
    return tmp_path, tiny_checkpoint


def ok_args(checkpoint) -> list[str]:
    return ["generate", "--reference", "ref.png", "--reference-keypoints", "ref.npy", "--target", "pose.npy",
            "--out", "out.png", "--checkpoint", str(checkpoint), "--steps", "1"]


CLI_CASES = {
    "truncated checkpoint": (["--checkpoint", "truncated.ckpt"], "not a readable checkpoint"),
    "empty checkpoint": (["--checkpoint", "empty.ckpt"], "not a readable checkpoint"),
    "checkpoint without hyper-parameters": (["--checkpoint", "nohp.ckpt"], "without the train stage's hyper-param"),
    "checkpoint config with an unknown key": (["--checkpoint", "unknown.ckpt"], "do not fit this handloom"),
    "checkpoint whose weights do not match": (["--checkpoint", "mismatched.ckpt"], "weights do not match"),
    "--size 0": (["--size", "0"], "argument --size: must be in [1, 8192], got 0"),
    "--steps -3": (["--steps", "-3"], "argument --steps: must be in [1, 10000], got -3"),
    "--appearance-scale inf": (["--appearance-scale", "inf"], "must be a finite number"),
    "target of width 0": (["--target", "w0.json"], "width and height must be whole numbers"),
    "keypoints that are words": (["--target", "words.json"], "keypoints must be numbers"),
    "--out an existing folder": (["--out", "."], "is a folder"),
}


def run_cli(args: list[str]) -> int:
    try:
        return handloom_main(args)
    except SystemExit as e:  # argparse's own exit on a bad flag
        return e.code


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_case(cli_inputs, capsys, case):
    tmp, checkpoint = cli_inputs
    extra, message = CLI_CASES[case]
    assert run_cli(ok_args(checkpoint) + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err and "Traceback" not in err, err
    assert not (tmp / "out.png").exists()


def test_cli_pairs_refused_before_anything_is_written(cli_inputs, capsys):
    tmp, checkpoint = cli_inputs
    path = pair_table(tmp, [dict(reference="ref.png", target="pose.npy", reference_keypoints="ref.npy",
                                 output=f"../escaped{i}.png") for i in range(2)])
    code = handloom_main(["generate", "--pairs", str(path), "--out", str(tmp / "batch"), "--checkpoint",
                          str(checkpoint), "--steps", "1"])
    assert code == 2 and "outside --out" in capsys.readouterr().err
    assert not list(tmp.glob("escaped*")) and not (tmp / "batch").exists()


# --- errors: stage scripts ------------------------------------------------------------------------------------------
def run_stage(project: Path, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "stages" / "ingest.py"), *args], cwd=project, text=True,
                          capture_output=True, env={**os.environ, **(env or {})}, timeout=300)


def stage_project(tmp_path: Path, ingest_params: dict, text: str | None = None) -> Path:
    params = {"ingest": ingest_params}
    (tmp_path / "params.yaml").write_text(text if text is not None else yaml.safe_dump(params))
    return tmp_path


STAGE_CASES = {
    "ingest stage meets an UnsafeArchiveError": "UnsafeArchiveError",
    "ingest stage meets a ChecksumError": "ChecksumError",
    "ingest stage meets a ParamsError (duplicate key)": "ParamsError",
}


@needs_samples
@pytest.mark.parametrize("case", STAGE_CASES)
def test_stage_prints_one_line_and_exits_2(tmp_path, case):
    kind = STAGE_CASES[case]
    if kind == "UnsafeArchiveError":
        evil_tar(tmp_path / "slip.tar", "onehand10k/../../escaped.txt")
        project = stage_project(tmp_path, {"synthetic": None, "onehand10k": {
            "source": str(tmp_path / "slip.tar"), "annotations": ["test_onehand10k.json"]}})
        expect = "escapes the target folder"
    elif kind == "ChecksumError":
        with tarfile.open(tmp_path / "o.tar", "w") as tar:
            tar.add(SAMPLES / "onehand10k", arcname="onehand10k")
        project = stage_project(tmp_path, {"synthetic": None, "onehand10k": {
            "source": str(tmp_path / "o.tar"), "sha256": "0" * 64, "annotations": ["test_onehand10k.json"]}})
        expect = "but params pin 0000"
    else:
        project = stage_project(tmp_path, {}, "ingest:\n  synthetic:\n    seed: 1\n    seed: 2\n")
        expect = "duplicate key 'seed'"
    done = run_stage(project, "onehand10k" if kind != "ParamsError" else "synthetic",
                     env={"HANDLOOM_CACHE_DIR": str(tmp_path / "cache")})
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], done.stderr


RAISING = """
import sys
from handloom.errors import run_entry_point
def main(*args):
    raise RuntimeError("a bug")
run_entry_point(main, *sys.argv[1:])
"""


@pytest.mark.parametrize("debug", [None, "flag", "env"])
def test_a_bug_is_one_line_unless_debug_is_asked_for(tmp_path, debug):
    (tmp_path / "stage.py").write_text(RAISING)
    args = ["--debug"] if debug == "flag" else []
    env = {**os.environ, "HANDLOOM_DEBUG": "1" if debug == "env" else "0"}
    done = subprocess.run([sys.executable, str(tmp_path / "stage.py"), *args], text=True, capture_output=True,
                          env=env, timeout=120)
    assert done.returncode == 1
    if debug is None:
        assert done.stderr.strip() == ("error: unexpected RuntimeError: a bug (a bug: rerun with --debug or "
                                       "HANDLOOM_DEBUG=1 for the traceback)")
    else:
        assert "Traceback" in done.stderr and "RuntimeError: a bug" in done.stderr


def test_expected_errors_exit_2():
    assert exit_code(ParamsError("x"), debug=True) == 2 and exit_code(FileNotFoundError("y"), debug=False) == 2


# --- reading images -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", range(1, 9))
def test_from_stored_moves_a_marked_pixel_where_pil_turns_it(orientation):
    stored = np.zeros((30, 50, 3), np.uint8)
    stored[7, 11] = 255  # (x, y) = (11, 7)
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="PNG", exif=exif(orientation))
    picture = read_picture(buffer.getvalue())
    y, x = np.unravel_index(picture.pixels[..., 0].argmax(), picture.pixels.shape[:2])
    np.testing.assert_allclose(picture.from_stored([11, 7]), [x, y])
    assert picture.stored_size == (50, 30) and picture.orientation == orientation


def test_the_cli_and_ingest_read_an_exif_jpeg_alike(tmp_path):
    """Old code: generate decoded with OpenCV (orientation applied), ingest with PIL (not applied)."""
    from handloom.datasets.adapter import read_image as ingest_read
    from handloom.generate import read_image as generate_read

    Image.fromarray(np.arange(24 * 40 * 3, dtype=np.uint8).reshape(24, 40, 3)).save(
        tmp_path / "x.jpg", quality=95, exif=exif(6))
    ingest_pixels = ingest_read(tmp_path / "x.jpg").pixels
    assert ingest_pixels.shape == (40, 24, 3)
    np.testing.assert_array_equal(ingest_pixels, generate_read(tmp_path / "x.jpg"))


def test_cmyk_jpeg_is_read_as_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    pixels = read_image_file(tmp_path / "c.jpg").pixels
    assert pixels.shape == (8, 8, 3) and pixels[..., 0].mean() > 200 and pixels[..., 1].mean() < 60


# --- statistics -----------------------------------------------------------------------------------------------------
ANNOTATE = """
import json, sys
from pathlib import Path
from handloom.annotate.pipeline import annotate_dataset
from handloom.params import AnnotateParams
tmp = Path(sys.argv[1])
params = AnnotateParams(workers=1, mask_backend="ground_truth", min_mask_area=0, cache_dir=str(tmp / "c"))
print(json.dumps(annotate_dataset(tmp / "ingest" / "toy", tmp / "annotations", params)))
"""


def test_annotate_counts_images_with_the_progress_bar_off(tmp_path):
    """tqdm reads TQDM_DISABLE when it is imported, so the stage runs in a process started with it set."""
    write_toy_dataset(tmp_path, "toy", TOY_SPECS)
    done = subprocess.run([sys.executable, "-c", ANNOTATE, str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "TQDM_DISABLE": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert stats["images"] == len(TOY_SPECS) == stats["annotated"] + stats["rejected"]


# --- The corpus: every named case and its class ---------------------------------------------------------------------
CASES: dict[str, str] = {
    **{case: cls for case, (cls, _) in INGEST.items()},
    "rotated images keep their keypoints on the hand": PIXELS,
    "16-bit and alpha follow the policy": PIXELS,
    "nothing outside the dataset is opened": PATHS,
    **{case: cls for case, (cls, _) in ADAPTERS.items()},
    **CASES_CONSISTENT,
    **{case: cls for case, (cls, _, _) in PAIR_TABLES.items()},
    "pairs file that is not Parquet": ERRORS,
    "two references that write one file": PATHS,
    **{case: ARCHIVES for case in ARCHIVE_CASES},
    "two processes resolving one archive at once": ARCHIVES,
    **{case: PARAMS for case in PARAMS_CASES},
    "duplicate key in params.yaml": PARAMS,
    **{case: PARAMS for case in OVERRIDES},
    **{case: ERRORS for case in CLI_CASES},
    "--pairs refused before anything is written": PATHS,
    **{case: ERRORS for case in STAGE_CASES},
    "a bug is one line unless --debug / HANDLOOM_DEBUG=1": ERRORS,
    **{f"EXIF orientation {o} moves a marked pixel where from_stored says": PIXELS for o in range(1, 9)},
    "the CLI and ingest read an EXIF JPEG alike": PIXELS,
    "CMYK JPEG read as RGB": PIXELS,
    "annotate counts images with TQDM_DISABLE=1": STATS,
}
CLASSES = (PIXELS, RECORD, PATHS, ARCHIVES, PARAMS, ERRORS, STATS)


def test_benchmarks_readme_reports_the_corpus():
    from test_bad_inputs import CASES as FIRST

    readme = (ROOT / "benchmarks" / "README.md").read_text()
    assert f"{len(CASES)} cases in {len(CLASSES)} classes" in readme
    assert f"{len(FIRST) + len(CASES)} named cases" in readme
    assert set(CASES.values()) == set(CLASSES)
