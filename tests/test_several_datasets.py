"""Several datasets in one run (issue #19): each evaluated on its own held-out split, a report that renders whatever
exists, one hand found twice kept once, one handedness rule, and adapters that read the default files that exist."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import write_toy_dataset
from handloom import schema
from handloom.annotate.captions import template_caption
from handloom.annotate.keypoints import suppress_duplicate
from handloom.annotate.pipeline import ImageInProgress, sample_handedness
from handloom.datasets.ingest import ingest
from handloom.datasets.samples import DEFAULT_SAMPLES_DIR
from handloom.datasets.store import read_manifest
from handloom.evaluate.pipeline import choose_pairs, evaluate, pairs_used
from handloom.io import decode_image, write_json, write_table
from handloom.params import HaGRIDParams, Params, ShardParams
from handloom.report.build import build_report
from handloom.shards.pairs import HOLD_OUT, make_pairs
from handloom.shards.writer import write_shards
from handloom.train.fit import fit

ROOT = Path(__file__).resolve().parents[1]


def index_of(keys: list[str]) -> pd.DataFrame:
    parts = [schema.SampleKey.parse(k) for k in keys]
    return pd.DataFrame(dict(key=keys, dataset=[p.dataset for p in parts], split=[p.split for p in parts],
                             sequence=[p.sequence for p in parts], frame=[p.frame for p in parts],
                             camera=[p.camera for p in parts]))


def test_each_dataset_is_evaluated_on_its_own_held_out_split(tmp_path):
    """The default has train and test only; a real dataset with a val split must not take the evaluation over."""
    keys = [f"synthetic/{split}/s{s}/{f}-{c}" for split, s in (("train", 0), ("test", 1)) for f in range(2)
            for c in range(2)]
    keys += [f"freihand/val/f{i}/0-0" for i in range(3)] + ["freihand/train/f9/0-0"]
    keys += [f"rhd/train/r{i}/{f}-0" for i in range(10) for f in range(2)]  # train only: a hashed hold-out
    write_table(tmp_path / schema.PAIRS_FILE, make_pairs(index_of(keys)))
    pairs = choose_pairs(tmp_path, n=12, seed=0)
    used = pairs_used(pairs)
    assert used == {"freihand": dict(split="val", pose=0, view=0, self=3),
                    "rhd": dict(split=HOLD_OUT, pose=2, view=0, self=0),
                    "synthetic": dict(split="test", pose=2, view=2, self=0)}
    held = set(pairs.reference[pairs.dataset == "rhd"])
    assert len({k.rsplit("/", 1)[0] for k in held}) == 1  # one rhd sequence of ten, never trained on
    all_pairs = pd.read_parquet(tmp_path / schema.PAIRS_FILE)
    assert set(all_pairs.split[all_pairs.reference.isin(held)]) == {HOLD_OUT}
    assert (all_pairs.split[all_pairs.reference.str.startswith("rhd/")] == "train").sum() == 18


def test_quota_is_shared_by_datasets_then_kinds(tmp_path):
    keys = [f"a/val/s{s}/{f}-{c}" for s in range(4) for f in range(3) for c in range(3)] + \
        [f"b/test/i{i}/0-0" for i in range(20)]
    write_table(tmp_path / schema.PAIRS_FILE, make_pairs(index_of(keys), max_partners=2))
    assert pairs_used(choose_pairs(tmp_path, n=16, seed=0)) == {
        "a": dict(split="val", pose=4, view=4, self=0), "b": dict(split="test", pose=0, view=0, self=8)}


TINY = dict(resolution=16, batch_size=2, warmup_steps=1, log_every_n_steps=1, accelerator="cpu",
            model=dict(patch_size=4, hidden_size=32, depth=1, num_heads=2))


def test_report_renders_self_pairs_only_and_only_the_enabled_datasets(tmp_path):
    """No held-out pose or view pair (the generate grid had nothing to tile), a dataset without ground truth,
    and a removed dataset's stale reports/data/<name>.json."""
    singles = [(split, f"img{i}", 0, "0") for i, split in enumerate(["val"] * 2 + ["train"] * 7)]
    write_toy_dataset(tmp_path, "solo", singles)
    write_toy_dataset(tmp_path, "nogt", [("test", f"n{i}", 0, "0") for i in range(8)], seed=1, ground_truth=False)
    shards = tmp_path / "shards"
    write_shards({d: (tmp_path / "ingest" / d, tmp_path / "annotations" / d) for d in ("solo", "nogt")}, shards,
                 ShardParams(crop_size=64))
    params = Params.model_validate(dict(train=dict(TINY, max_steps=2, sample_every_n_steps=100),
                                        evaluate=dict(n_pairs=4, sample_steps=1), report=dict(grid_rows=4)))
    models, reports = tmp_path / "models", tmp_path / "reports"
    fit(params.train, shards, models, reports / "train")
    write_json(reports / "metrics.json", evaluate(models, shards, tmp_path / "eval", params.train, params.evaluate))
    for name in ("solo", "nogt", "removed"):
        write_json(reports / "data" / f"{name}.json", dict(images=3, annotated=3, rejected=0))
    build_report(reports, tmp_path / "eval", shards, params.report, models, params)

    report = (reports / "report.md").read_text()
    assert "| nogt | test | 0 | 0 | 2 |" in report and "| solo | val | 0 | 0 | 2 |" in report
    assert "nogt, solo: no pose or view pairs held out" in report
    assert "No held-out pose or view pair to show." in report
    assert "removed" not in report and not (reports / "figures" / "data_removed.png").exists()
    assert "![nogt samples: no ground truth, MediaPipe keypoints red]" in report
    assert "![solo samples: exact keypoints green, MediaPipe red]" in report
    for name, n in (("solo", 6), ("nogt", 6)):  # 9 and 8 samples: one full row of 6, every cell a sample
        grid = decode_image((reports / "figures" / f"data_{name}.png").read_bytes())
        assert grid.shape[:2] == (192, 192 * n) and all(grid[:, i * 192:(i + 1) * 192].std() > 0 for i in range(n))


def detection(*hands) -> np.ndarray:
    """42x3 keypoints: (slot, x offset, score) per hand, a 100 px fan of joints."""
    k = schema.empty_keypoints()
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 100, (21, 2))
    for slot, dx, score in hands:
        k[schema.hand_rows(slot)] = np.column_stack([base + [dx, 0], np.full(21, score)])
    return k


def test_one_hand_found_twice_keeps_the_stronger_and_two_hands_stay():
    twice = detection(("right", 0, 0.7), ("left", 18, 0.9))  # ~0.18 x the box apart, as MediaPipe did
    kept = suppress_duplicate(twice)
    assert not schema.hand_present(kept, "right") and np.array_equal(kept[21:], twice[21:])
    two = detection(("right", 0, 0.7), ("left", 60, 0.9))
    assert np.array_equal(suppress_duplicate(two), two)


def sample_of(metadata: dict, gt: np.ndarray | None, mp: np.ndarray) -> ImageInProgress:
    from handloom.annotate.pipeline import detection_from

    record = pd.Series(dict(metadata=json.dumps(metadata), dataset="d", camera="0"))
    return ImageInProgress("d/test/s/0-0", record, np.zeros((4, 4, 3), np.uint8), "", None, gt, detection_from(mp))


def test_ground_truth_decides_handedness_and_the_rows_and_caption_follow():
    mp_left = detection(("left", 0, 0.9))
    # The dataset says right: it wins over MediaPipe's left.
    assert sample_handedness(sample_of({"handedness": ["right"]}, None, mp_left)) == (["right"], "ground_truth")
    assert schema.hand_present(schema.on_sides(mp_left, ["right"]), "right")
    # OneHand10K: ground truth without a side sits in the first block; MediaPipe's side of that hand is taken.
    gt = detection(("right", 0, 1.0))
    s = sample_of({"handedness": []}, gt, mp_left)
    assert sample_handedness(s) == (["left"], "mediapipe")
    assert np.array_equal(schema.on_sides(gt, ["left"])[21:], gt[:21])
    # One hand found twice is one hand in the caption.
    s = sample_of({"handedness": []}, None, detection(("right", 0, 0.6), ("left", 18, 0.9)))
    assert sample_handedness(s) == (["left"], "mediapipe")
    assert template_caption("hagrid", ["left"], {"gesture": "no_gesture"}) == \
        "A photo of a left hand making no gesture (hagrid)."


@pytest.mark.skipif(not DEFAULT_SAMPLES_DIR.is_dir(), reason="../shared/data/hand_samples is not beside the repo")
def test_default_annotations_that_exist_are_read_and_a_named_missing_file_is_one_line(tmp_path, capfd):
    src = shutil.copytree(DEFAULT_SAMPLES_DIR / "hagrid", tmp_path / "hagrid")  # annotations/test only
    ingest("hagrid", HaGRIDParams(source=str(src)), tmp_path / "out")
    assert len(read_manifest(tmp_path / "out")) == 11  # 9 images, two with a second hand of their own
    assert "no annotations/train, annotations/val; reading the annotation files that exist" in capfd.readouterr().err

    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump(
        {"ingest": {"hagrid": {"source": str(src), "annotations": ["annotations/val"]}}}))
    run = subprocess.run([sys.executable, str(ROOT / "stages" / "ingest.py"), "hagrid"], cwd=project,
                         capture_output=True, text=True, env={**os.environ, "DO_NOT_TRACK": "1"})
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [
        f"error: ingest@hagrid: annotation file(s) annotations/val not found under {src}: set `annotations` of this "
        "dataset in params.yaml to the files it has"]
