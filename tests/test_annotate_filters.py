"""The papers' quality filters and the mask backend choice: every image becomes one annotation row or one reject
row with its reason, never nothing."""
import numpy as np
import pytest

from handloom import schema
from handloom.annotate import pipeline, quality
from handloom.annotate.keypoints import HandDetection
from handloom.datasets.store import DatasetWriter, read_rejects
from handloom.io import read_table
from handloom.params import AnnotateParams

SIZE = 96


def hand(x0: float, size: float = 60) -> np.ndarray:
    k = schema.empty_keypoints()
    k[:21] = np.column_stack([np.linspace(x0, x0 + size, 21), np.linspace(10, 10 + size, 21), np.ones(21)])
    return k


# name -> (ground-truth keypoints or None, mask side in px or None, what the fake MediaPipe finds: keypoints, score)
CASES = {
    "agrees": (hand(10), 60, (hand(12), 0.9)),
    "disagrees": (hand(10), 60, (hand(30), 0.9)),        # every joint 20 px off a 60 px hand: > 0.2 x box
    "missed": (hand(10), 60, (None, 0.0)),               # nothing to compare: kept
    "no_gt_confident": (None, 60, (hand(10), 0.9)),
    "no_gt_unsure": (None, 60, (hand(10), 0.3)),
    "no_gt_none": (None, 60, (None, 0.0)),
    "small_mask": (hand(10), 20, (hand(10), 0.9)),       # 400 px < 2500; the others have 3600
    "no_mask": (hand(10), None, (hand(10), 0.9)),
}


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    """One image per case, each with its own colour so the fake detector can tell them apart."""
    writer = DatasetWriter(tmp_path / "ingest", "cases", license="test", source="test")
    found = {}
    for i, (name, (gt, mask_side, (mp, score))) in enumerate(CASES.items()):
        image = np.full((SIZE, SIZE, 3), 20 * i, np.uint8)
        mask = None
        if mask_side:
            mask = np.zeros((SIZE, SIZE), np.uint8)
            mask[:mask_side, :mask_side] = 255
        writer.add(schema.SampleKey("cases", "train", name, 0, "0"), image, gt, (0, 0, SIZE, SIZE), {}, mask=mask)
        keypoints = schema.empty_keypoints() if mp is None else mp.copy()
        keypoints[:21, 2] *= score
        found[20 * i] = HandDetection(keypoints, ("right",) if score else (), (score, 0.0))
    writer.write()
    monkeypatch.setattr(pipeline, "detect_many",
                        lambda images, conf, workers: [found[int(im[0, 0, 0])] for im in images])
    return tmp_path


def run(dataset, **params) -> dict[str, str]:
    """Case -> 'ok' or its reject reason, after checking every image landed in exactly one table."""
    p = AnnotateParams(workers=1, cache_dir=str(dataset / "cache"), **params)
    stats = pipeline.annotate_dataset(dataset / "ingest", dataset / "out", p)
    rows = read_table(dataset / "out" / schema.ANNOTATIONS_FILE).to_pandas()
    rejects = read_rejects(dataset / "out")
    assert len(rows) + len(rejects) == len(CASES) == stats["images"]
    assert list(rejects.key) == sorted(rejects.key) and (rejects.stage == "annotate").all()
    outcome = {k.split("/")[2]: "ok" for k in rows.key}
    outcome |= {k.split("/")[2]: r for k, r in zip(rejects.key, rejects.reason)}
    return outcome | {"mask_backends": dict(zip(rows.key.str.split("/").str[2], rows.mask_backend))}


def test_filters_reject_with_their_reason(dataset):
    outcome = run(dataset, mask_backend="auto", min_mp_score=0.5, max_gt_disagreement=0.5)
    backends = outcome.pop("mask_backends")
    assert outcome == {"agrees": "ok", "disagrees": schema.Reject.GT_DISAGREEMENT, "missed": "ok",
                       "no_gt_confident": "ok", "no_gt_unsure": schema.Reject.LOW_DETECTION_SCORE,
                       "no_gt_none": schema.Reject.LOW_DETECTION_SCORE, "small_mask": schema.Reject.SMALL_MASK,
                       "no_mask": "ok"}
    assert backends["agrees"] == "ground_truth" and backends["no_mask"] == "grabcut"


def test_filters_off_keep_everything_but_an_absent_ground_truth_mask(dataset):
    outcome = run(dataset, mask_backend="ground_truth", min_mp_score=0, max_gt_disagreement=1, min_mask_area=0)
    backends = outcome.pop("mask_backends")
    assert outcome == {name: "ok" for name in CASES} | {"no_mask": schema.Reject.MISSING_FIELD}
    assert set(backends.values()) == {"ground_truth"}


def test_stats_count_rejects_by_reason_and_measure_agreement(dataset):
    p = AnnotateParams(workers=1, cache_dir=str(dataset / "cache"))
    stats = pipeline.annotate_dataset(dataset / "ingest", dataset / "out", p)
    assert stats["rejects"] == {schema.Reject.GT_DISAGREEMENT: 1, schema.Reject.LOW_DETECTION_SCORE: 2,
                                schema.Reject.SMALL_MASK: 1}
    # Over the annotated samples with ground truth: agrees (2 px off a 60 px hand), missed and no_mask (exact).
    assert stats["detection_rate"] == 0.6667 and stats["pck_0_1"] == stats["pck_0_2"] == 1.0


def test_where_the_dataset_does_not_say_which_hand_mediapipe_side_is_not_held_against_it():
    gt, mp = hand(10), schema.empty_keypoints()
    mp[21:] = hand(11)[:21]  # the same hand, which MediaPipe calls a left one
    assert quality.comparable(mp, gt, sides_known=True) is mp
    assert np.array_equal(quality.comparable(mp, gt, sides_known=False)[:21], hand(11)[:21])
    far = hand(40)
    assert quality.comparable(far, gt, sides_known=False) is far  # nothing agrees better swapped
