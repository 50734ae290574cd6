"""MediaPipe keypoints: real detections on rendered hands, the handedness swap, the PCK / detection metrics."""
from types import SimpleNamespace

import numpy as np
import pytest

from handloom import keypoint_metrics as M
from handloom import schema
from handloom.annotate import keypoints as K
from handloom.datasets.synthetic import render_dataset


@pytest.fixture(scope="module")
def rendered():
    """8 sequences x 2 frames x 3 cameras at 256 px, about 20 % with two hands, and MediaPipe on each."""
    frames = list(render_dataset(0, 8, 2, 3, 256, 0.2))
    return frames, K.detect_many([f.image for f in frames], 0.1, workers=2)


@pytest.fixture(scope="module")
def detector():
    with K.make_detector(0.1) as d:
        yield d


def test_mediapipe_reads_the_synthetic_hands(rendered):
    frames, detections = rendered
    pred, gt = np.stack([d.keypoints for d in detections]), np.stack([f.keypoints for f in frames])
    assert sum(len(f.handedness) for f in frames) > len(frames)  # some two-hand images
    assert M.detection_rate(pred, gt) >= 0.8
    assert M.pck(pred, gt, 0.2) >= 0.8


def test_handedness_follows_the_rendered_hand(rendered):
    """Without swapping MediaPipe's selfie labels almost every single hand would land in the wrong slot."""
    frames, detections = rendered
    singles = [(f.handedness, d.handedness) for f, d in zip(frames, detections)
               if len(f.handedness) == 1 and len(d.handedness) == 1]
    assert len(singles) > 20 and {h for h, _ in singles} == {("right",), ("left",)}
    assert np.mean([truth == found for truth, found in singles]) > 0.9


def test_detect_many_matches_detect_hands(rendered, detector):
    frames, detections = rendered
    for f, d in list(zip(frames, detections))[:3]:
        again = K.detect_hands(f.image, detector)
        assert np.allclose(again.keypoints, d.keypoints, atol=1e-3) and again.handedness == d.handedness


def test_blank_image_has_no_hands(detector):
    d = K.detect_hands(np.full((256, 256, 3), 128, np.uint8), detector)
    assert not np.any(d.keypoints) and d.handedness == () and d.scores == (0.0, 0.0)


def fake_detector(*hands):
    """A stand-in for mp Hands returning (label, score, x) hands, each a vertical line of landmarks at x."""
    result = SimpleNamespace(
        multi_hand_landmarks=[SimpleNamespace(landmark=[SimpleNamespace(x=x, y=i / 21) for i in range(21)])
                              for _, _, x in hands],
        multi_handedness=[SimpleNamespace(classification=[SimpleNamespace(label=label, score=score)])
                          for label, score, _ in hands])
    return SimpleNamespace(process=lambda image: result)


def test_selfie_labels_are_swapped_and_duplicates_take_the_free_slot():
    image = np.zeros((100, 200, 3), np.uint8)
    d = K.detect_hands(image, fake_detector(("Left", 0.9, 0.25)))
    assert d.handedness == ("right",) and d.scores == (0.9, 0.0)
    assert np.allclose(d.keypoints[schema.hand_rows("right")][:, 0], 50) and not np.any(d.keypoints[21:])
    assert np.allclose(d.keypoints[:21, 2], 0.9)
    d = K.detect_hands(image, fake_detector(("Right", 0.6, 0.25), ("Right", 0.8, 0.75)))
    assert d.handedness == ("right", "left") and d.scores == (0.6, 0.8)
    assert np.allclose(d.keypoints[schema.hand_rows("left")][:, 0], 150)  # the more confident keeps "left"


def hand(x0: float, size: float = 100) -> np.ndarray:
    k = schema.empty_keypoints()
    k[:21] = np.column_stack([np.linspace(x0, x0 + size, 21), np.linspace(0, size, 21), np.ones(21)])
    return k


def test_pck_is_relative_to_the_hand_box():
    gt = hand(10)
    assert M.pck(gt, gt, 0.2) == 1.0
    assert M.pck(gt + [19, 0, 0], gt, 0.2) == 1.0  # 19 px < 0.2 x 100 px box
    assert M.pck(gt + [21, 0, 0], gt, 0.2) == 0.0
    assert np.isnan(M.pck(schema.empty_keypoints(), gt, 0.2))  # no hand in both: undefined
    pred = np.stack([gt, gt + [50, 0, 0]])
    assert M.pck(pred, np.stack([gt, gt]), 0.2) == 0.5  # pooled over images


def test_detection_rate_counts_gt_hands_found_in_their_own_slot():
    both = hand(10)
    both[21:] = hand(150)[:21]
    right_only = hand(10)
    left_only = schema.empty_keypoints()
    left_only[21:] = right_only[:21]
    assert M.detection_rate(np.stack([right_only, both]), np.stack([both, both])) == 0.75
    assert M.detection_rate(left_only, right_only) == 0.0  # wrong handedness is a miss
    assert np.isnan(M.detection_rate(right_only, schema.empty_keypoints()))
