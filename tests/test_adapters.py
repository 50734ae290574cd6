"""Each public-dataset adapter on the real sample files: hand counts, handedness, joint order, rejects."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from handloom import schema
from handloom.datasets import crops
from handloom.datasets.ingest import ingest
from handloom.datasets.samples import sample_params
from handloom.datasets.store import keypoints_array, read_manifest, read_rejects
from handloom.datasets.summary import counts_table, render_overlays
from handloom.params import HaGRIDParams, parse_params

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "hand_samples"
ROOT = Path(__file__).resolve().parents[1]
KEYPOINT_DATASETS = ("freihand", "interhand", "onehand10k", "rhd", "panoptic", "coco_wholebody")
pytestmark = pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/data/hand_samples is not beside the repo")


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """Every adapter run once on its sample folder: name -> (manifest rows with parsed metadata, rejects)."""
    out = tmp_path_factory.mktemp("ingest")
    result = {}
    for name, params in sample_params(SAMPLES).items():
        ingest(name, params, out / name)
        manifest = read_manifest(out / name)
        manifest["meta"] = [json.loads(m) for m in manifest["metadata"]]
        result[name] = (manifest, read_rejects(out / name), out / name)
    return result


def by_key(manifest) -> dict:
    return {row.key: row for row in manifest.itertuples()}


def native_in_crop(xy, meta, size=512) -> np.ndarray:
    """Source-image pixels -> the crop's pixels, from the crop square the adapter recorded."""
    x0, y0, side = meta["crop_square"]
    return (np.asarray(xy, np.float64) - (x0, y0)) * size / side


def load(relpath: str) -> dict:
    return json.loads((SAMPLES / relpath).read_text())


# --- One test per adapter: real values from PROVENANCE.md --------------------------------------------------
def test_freihand_right_hands_and_versions_share_a_split(ingested):
    manifest, rejects, _ = ingested["freihand"]
    assert len(manifest) == 8 and len(rejects) == 0
    for row in manifest.itertuples():
        k = keypoints_array(row.gt_keypoints)
        assert row.meta["handedness"] == ["right"]
        assert schema.hand_present(k, "right") and not schema.hand_present(k, "left")
    groups = {}
    for row in manifest.itertuples():
        groups.setdefault(row.meta["pose_id"], []).append(row)
    assert sorted(groups) == [355, 17620]
    for rows in groups.values():  # four appearance versions: one split, identical keypoints, separate sequences
        assert len(rows) == 4 and len({r.split for r in rows}) == 1 and len({r.sequence for r in rows}) == 4
        assert np.abs(np.diff([keypoints_array(r.gt_keypoints) for r in rows], axis=0)).max() == 0
    # Identity order: the crop's joints are the file's joints, moved by the crop only.
    native = {a["image_id"]: a for a in load("freihand/test_freihand.json")["annotations"]}
    row = by_key(manifest)["freihand/train/00000355/0-0"]
    expect = native_in_crop(np.reshape(native[355]["keypoints"], (21, 3))[:, :2], row.meta)
    np.testing.assert_allclose(keypoints_array(row.gt_keypoints)[:21, :2], expect, atol=0.05)


def test_interhand_projects_world_joints_and_keeps_sequence_frame_camera(ingested):
    manifest, rejects, _ = ingested["interhand"]
    assert len(rejects) == 0
    rows = by_key(manifest)
    assert set(rows) == {"interhand/test/Capture3_0390_dh_touchROM/69148-400026",
                         "interhand/test/Capture2_0266_dh_pray/44669-400012",
                         "interhand/test/Capture7_0115_rocker_backside/29590-410053",
                         "interhand/test/Capture4_0007_thumbup_normal/2017-410028"}
    sides = {key.split("/")[3]: row.meta["handedness"] for key, row in rows.items()}
    assert sides == {"69148-400026": ["right", "left"], "44669-400012": ["right", "left"],
                     "29590-410053": ["left"], "2017-410028": ["right"]}
    assert all(row.meta["interacting"] for row in rows.values() if len(row.meta["handedness"]) == 2)
    # Wrist-last, tip->base: MediaPipe joint 0 is native 20 (+21 for the left), joint 4 (thumb tip) is native 0,
    # joint 17 (little MCP) is native 19. Project the raw world joints here and compare.
    cams = load("interhand2.6m/test_interhand2.6m_camera.json")
    joints = load("interhand2.6m/test_interhand2.6m_joint_3d.json")
    row = rows["interhand/test/Capture3_0390_dh_touchROM/69148-400026"]
    cam = {k: np.asarray(v["400026"], np.float64) for k, v in cams["3"].items()}
    world = np.asarray(joints["3"]["69148"]["world_coord"], np.float64)
    xc = (cam["camrot"] @ (world - cam["campos"]).T).T
    uv = native_in_crop(xc[:, :2] / xc[:, 2:] * cam["focal"] + cam["princpt"], row.meta)
    k = keypoints_array(row.gt_keypoints)
    for mp, native in ((0, 20), (4, 0), (1, 3), (17, 19), (20, 16)):
        np.testing.assert_allclose(k[mp, :2], uv[native], atol=0.05)          # right hand
        np.testing.assert_allclose(k[21 + mp, :2], uv[21 + native], atol=0.05)  # left hand


def test_hagrid_boxes_and_gestures_without_keypoints(ingested):
    manifest, rejects, _ = ingested["hagrid"]
    assert len(rejects) == 0 and len(manifest) == 11  # 9 photos; `four` and `three2` hold a no_gesture hand too
    assert manifest["gt_keypoints"].isna().all()
    gestures = sorted(row.meta["gesture"] for row in manifest.itertuples())
    assert gestures == sorted(["call", "fist", "four", "one", "rock", "three", "three2", "two_up", "two_up_inverted",
                               "no_gesture", "no_gesture"])
    for row in manifest.itertuples():
        assert row.meta["handedness"] == [] and row.split == "test"
        assert row.meta["gesture"] in (row.meta["gesture_class"], "no_gesture")
        x0, y0, x1, y1 = row.bbox  # the hand box, centred in the crop (to half a source pixel) with context
        half_pixel = 0.5 * 512 / row.meta["crop_square"][2]
        assert 0 < x0 < x1 < 512 and 0 < y0 < y1 < 512
        assert abs((x0 + x1) / 2 - 256) <= half_pixel and abs((y0 + y1) / 2 - 256) <= half_pixel
    users = {row.meta["user_id"][:8] for row in manifest.itertuples()}
    assert users == {"db35fa30", "dd790853"}


def test_onehand10k_unknown_side_and_unlabelled_joints_stay_absent(ingested):
    manifest, rejects, _ = ingested["onehand10k"]
    assert len(manifest) == 4 and len(rejects) == 0
    rows = by_key(manifest)
    for row in rows.values():
        assert row.meta["handedness"] == []  # not annotated: annotate takes MediaPipe's word
        assert not schema.hand_present(keypoints_array(row.gt_keypoints), "left")
    k9 = keypoints_array(rows["onehand10k/test/9/0-0"].gt_keypoints)
    assert np.all(k9[0] == 0) and np.all(k9[1:21, 2] == 1)  # the file's (0, 0, 0) wrist is not invented


def test_rhd_tip_to_base_fingers_are_reversed(ingested):
    manifest, rejects, _ = ingested["rhd"]
    assert len(rejects) == 0
    rows = by_key(manifest)
    assert {k: r.meta["handedness"] for k, r in rows.items()} == {
        "rhd/test/00111/0-0": ["left"], "rhd/test/01111/0-0": ["left"], "rhd/test/11111/0-0": ["right"]}
    native = {a["image_id"]: np.asarray(a["keypoints"], np.float64) for a in load("rhd/test_rhd.json")["annotations"]}
    row = rows["rhd/test/00111/0-0"]
    k = keypoints_array(row.gt_keypoints)[schema.hand_rows("left")]
    expect = native_in_crop(native[111][:, :2], row.meta)
    for mp, rhd in ((0, 0), (1, 4), (4, 1), (5, 8), (8, 5), (17, 20), (20, 17)):
        np.testing.assert_allclose(k[mp, :2], expect[rhd], atol=0.05)


def test_panoptic_pairs_l_and_r_files_into_one_picture(ingested):
    manifest, rejects, _ = ingested["panoptic"]
    assert len(rejects) == 0 and len(manifest) == 4
    pictures = {}
    for row in manifest.itertuples():
        pictures.setdefault(row.sequence.rsplit("_h", 1)[0], []).append(row.meta["handedness"])
    assert pictures == {"005880453_01": [["left"], ["right"]], "ex2_2.flv_000040": [["left"], ["right"]]}
    # The `_l` file's keypoints are the left block: its hand sits on the cello's fingerboard (PROVENANCE.md).
    native = {i["file_name"]: i["id"] for i in load("cmu_panoptic_handdb/test_panoptic.json")["images"]}
    left = [r for r in manifest.itertuples() if r.meta["handedness"] == ["left"] and r.sequence.startswith("0058")][0]
    assert left.meta["records"] == [f"test_panoptic.json#{native['005880453_01_l.jpg']}"]


def test_coco_wholebody_many_hands_per_image(ingested):
    manifest, rejects, _ = ingested["coco_wholebody"]
    assert len(rejects) == 0
    hands = {}
    for row in manifest.itertuples():
        image = row.sequence.split("_h")[0]
        hands.setdefault(image, []).extend(row.meta["handedness"])
    # 10 valid hands: 785 R; 40083 L; 196141 L+R, L; 197388 L+R, R, L+R (PROVENANCE.md).
    assert {k: sorted(v) for k, v in hands.items()} == {
        "000000000785": ["right"], "000000040083": ["left"], "000000196141": ["left", "left", "right"],
        "000000197388": ["left", "left", "right", "right", "right"]}
    two = [row for row in manifest.itertuples() if row.meta["interacting"]]
    assert len(two) == 1 and two[0].sequence.startswith("000000196141")  # one person's touching hands: one crop
    assert len({r.split("/")[0] for r in two[0].meta["records"]}) == 1


# --- Joint order by geometry, on every dataset with keypoints ----------------------------------------------
REVERSED_FINGERS = np.array([0, *(1 + 4 * f + 3 - j for f in range(5) for j in range(4))])


def order_checks(k: np.ndarray) -> dict[str, bool]:
    """Facts of a hand's anatomy that survive most 2D views; None-free: only called with all joints labelled."""
    d = lambda a, b: float(np.linalg.norm(k[a, :2] - k[b, :2]))  # noqa: E731
    tips, bases = (4, 8, 12, 16, 20), (1, 5, 9, 13, 17)
    axis = k[17, :2] - k[5, :2]
    along = [float((k[j, :2] - k[5, :2]) @ axis) for j in (5, 9, 13, 17)]
    centroid = k[tips, :2].mean(0)
    return {
        "knuckles index->little in a row": bool(np.all(np.diff(along) > 0)),
        "little tip on the little side": d(20, 17) < d(20, 5),
        "tips farther from the wrist than bases": np.mean([d(0, t) for t in tips]) > np.mean([d(0, b) for b in bases]),
        "wrist farthest from the tips' centroid": all(
            np.linalg.norm(k[0, :2] - centroid) > np.linalg.norm(k[b, :2] - centroid) for b in bases),
    }


@pytest.mark.parametrize("name", KEYPOINT_DATASETS)
def test_reordered_keypoints_land_on_the_right_joints(ingested, name):
    manifest = ingested[name][0]
    hands = [k[schema.hand_rows(h)] for k in map(keypoints_array, manifest["gt_keypoints"]) for h in schema.HANDS]
    hands = [k for k in hands if np.all(k[:, 2] > 0)]  # fully labelled hands (OneHand10K leaves some out)
    assert hands
    good = [order_checks(k) for k in hands]
    bad = [order_checks(k[REVERSED_FINGERS]) for k in hands]  # what an unreversed RHD/InterHand would give
    for check in good[0]:
        share = np.mean([g[check] for g in good])
        if check.startswith(("knuckles", "little")):
            assert share == 1, f"{name}: {check} fails on some hands"
        else:  # real 2D views foreshorten a few hands; a wrong order fails most of them
            assert share >= 2 / 3, f"{name}: {check} holds for {share:.0%} of hands"
    assert np.mean([b["tips farther from the wrist than bases"] for b in bad]) <= 1 / 3


# --- Every record is accounted for; bad inputs become rejects -----------------------------------------------
def accounted(manifest, rejects) -> list[str]:
    return [r for m in manifest["meta"] for r in m["records"]] + list(rejects["key"])


def test_every_sample_record_is_in_the_manifest(ingested):
    expected = {"freihand": 8, "interhand": 6, "hagrid": 11, "onehand10k": 4, "rhd": 3, "panoptic": 4,
                "coco_wholebody": 10}
    for name, (manifest, rejects, _) in ingested.items():
        records = accounted(manifest, rejects)
        assert len(records) == len(set(records)) == expected[name], name
        assert len(set(manifest["key"])) == len(manifest)
        assert all(schema.SampleKey.parse(k) for k in manifest["key"])
        assert set(manifest["width"]) == set(manifest["height"]) == {512}


def test_corrupt_image_and_truncated_annotation_become_rejects(tmp_path):
    src = shutil.copytree(SAMPLES / "hagrid", tmp_path / "hagrid")
    call = next((src / "hagrid_dataset_512" / "call").glob("*.jpg"))
    call.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    four = src / "annotations/test/four.json"
    four.write_bytes(four.read_bytes()[: len(four.read_bytes()) // 2])
    writer = ingest("hagrid", HaGRIDParams(source=str(src), annotations=("annotations/test",)), tmp_path / "out")
    manifest, rejects = read_manifest(tmp_path / "out"), read_rejects(tmp_path / "out")
    reasons = dict(zip(rejects["key"], rejects["reason"]))
    assert reasons == {f"annotations/test/call.json#{call.stem}/0": schema.Reject.UNREADABLE_IMAGE,
                       "annotations/test/four.json": schema.Reject.TRUNCATED_ANNOTATION}
    assert len(manifest) == writer.n_samples == 11 - 1 - 2  # the call hand and both hands of `four` are out
    kept = {r for m in manifest["metadata"] for r in json.loads(m)["records"]}
    assert not any(r.startswith(("annotations/test/call.json", "annotations/test/four.json")) for r in kept)


# Bad keypoints, truncated, empty and misnamed images: tests/reliability/test_bad_inputs.py (the bad-input corpus).


def test_unknown_gesture_label_is_rejected(tmp_path):
    src = shutil.copytree(SAMPLES / "hagrid", tmp_path / "hagrid")
    path = src / "annotations/test/rock.json"
    path.write_text(path.read_text().replace('"rock"', '"spock"'))
    ingest("hagrid", HaGRIDParams(source=str(src), annotations=("annotations/test",)), tmp_path / "out")
    rejects = read_rejects(tmp_path / "out")
    assert list(rejects["reason"]) == [schema.Reject.UNKNOWN_LABEL] and "spock" in rejects["detail"][0]


# --- Crops, reruns, params, docs ----------------------------------------------------------------------------
def test_hands_that_touch_share_a_crop_and_far_or_same_side_hands_do_not():
    near, touching, far = (0, 0, 10, 10), (11, 0, 21, 10), (60, 0, 70, 10)
    assert crops.group_hands([near, touching, far], ["right", "left", "left"], 0.25) == [[0, 1], [2]]
    assert crops.group_hands([near, touching], ["right", "right"], 0.25) == [[0], [1]]
    assert crops.group_hands([near, far], ["right", "left"], 0.25, together=True) == [[0, 1]]


def test_rerun_writes_identical_bytes(tmp_path):
    params = sample_params(SAMPLES)["coco_wholebody"]
    for out in ("a", "b"):
        ingest("coco_wholebody", params, tmp_path / out)
    for f in ("manifest.parquet", "rejects.parquet", "images/part-00000.parquet"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_params_yaml_example_block_validates():
    """The commented `ingest:` example in params.yaml, uncommented, is valid params."""
    text = (ROOT / "params.yaml").read_text()
    active = yaml.safe_load(text)
    assert list(active["ingest"]) == ["synthetic"]  # the default run stays offline
    lines = text.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("  # freihand:")))
    block = []
    for line in lines[start:]:
        if not line.startswith("  # "):
            break
        block.append("  " + line[4:])
    params = parse_params({"ingest": yaml.safe_load("\n".join(block))})
    assert {"freihand", "interhand", "hagrid", "onehand10k", "rhd", "panoptic", "coco_wholebody"} <= set(
        k for k, v in params.ingest if v is not None)


def test_summary_table_and_overlays(ingested, tmp_path):
    dirs = [ingested[name][2] for name in sample_params(SAMPLES)]
    table = counts_table(dirs)
    assert "| coco_wholebody | 9 | 10 | 5 | 5 | 0 | 1 |" in table
    render_overlays(dirs, tmp_path / "overlays.png", size=128)
    assert (tmp_path / "overlays.png").stat().st_size > 10_000


def test_stage_ingests_a_dataset_named_in_params(tmp_path):
    """`ingest@freihand` as DVC runs it: the stage script, in the repo's working directory layout."""
    import subprocess
    import sys

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ingest"] = {"freihand": {"source": str(SAMPLES / "freihand"), "annotations": ["test_freihand.json"]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run = subprocess.run([sys.executable, str(ROOT / "stages/ingest.py"), "freihand"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "ingest@freihand: 8 samples, 0 rejects" in run.stdout
    assert len(read_manifest(tmp_path / "data/ingest/freihand")) == 8
