"""Mask backends: SAM from a saved tiny checkpoint (real segment-anything code, real tensors), SAM's prompts, and the
GrabCut fallback on rendered hands against their exact masks."""
import pickle

import cv2
import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from handloom import schema
from handloom.annotate import masks as M
from handloom.annotate.sam import SamMasker, hand_prompts, load_sam
from handloom.datasets.synthetic import render_dataset
from tiny_models import TINY_SAM, save_tiny_sam


def two_hands(size: int = 160) -> np.ndarray:
    """Right hand on the left half, left hand on the right half, every joint visible."""
    rng = np.random.default_rng(0)
    k = schema.empty_keypoints()
    k[:21, :2] = rng.uniform(0.1 * size, 0.4 * size, (21, 2))
    k[21:, :2] = rng.uniform(0.6 * size, 0.9 * size, (21, 2))
    k[:, 2] = 1
    return k


def test_prompts_are_the_hands_own_joints_positive_and_the_other_hands_negative():
    k = two_hands()
    k[30] = 0  # an absent joint of the left hand
    coords, labels = hand_prompts(k)
    assert coords.shape == (2, 41, 2) and labels.shape == (2, 41)
    assert np.allclose(coords[0], np.delete(k, 30, 0)[:, :2]) and np.allclose(coords[1], coords[0])
    assert labels[0, :21].all() and not labels[0, 21:].any()
    assert not labels[1, :21].any() and labels[1, 21:].all()
    one = k.copy()
    one[21:] = 0
    coords, labels = hand_prompts(one)
    assert coords.shape == (1, 21, 2) and np.all(labels == 1)
    assert hand_prompts(schema.empty_keypoints())[0].shape[0] == 0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_sam(tmp_path_factory.mktemp("sam") / "sam_tiny.pth")


def test_sam_mask_is_the_union_of_one_predictor_call_per_hand_dilated(checkpoint):
    """The batched hands give what SamPredictor.predict gives hand by hand, then 5x5 dilation."""
    image = np.random.default_rng(1).integers(0, 255, (160, 200, 3), np.uint8)
    k = two_hands()
    mask = SamMasker(str(checkpoint), TINY_SAM, "cpu").mask(image, k)
    assert mask.shape == (160, 200) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}

    predictor = SamPredictor(load_sam(str(checkpoint), TINY_SAM))
    predictor.set_image(image)
    union = np.zeros((160, 200), bool)
    for own, other in ((slice(0, 21), slice(21, 42)), (slice(21, 42), slice(0, 21))):
        points = np.concatenate([k[own, :2], k[other, :2]])
        labels = np.r_[np.ones(21), np.zeros(21)]
        with torch.inference_mode():
            union |= predictor.predict(points, labels, multimask_output=False)[0][0]
    assert np.array_equal(mask, M.dilate(union.astype(np.uint8) * 255))


def test_sam_without_hands_is_empty_and_checkpoints_load_weights_only(checkpoint, tmp_path):
    masker = SamMasker(str(checkpoint), TINY_SAM, "cpu")
    assert not masker.mask(np.zeros((64, 64, 3), np.uint8), schema.empty_keypoints()).any()
    evil = tmp_path / "evil.pth"
    torch.save({"payload": pickle.Unpickler}, evil)  # a global a weights_only load refuses to import
    with pytest.raises(pickle.UnpicklingError):
        load_sam(str(evil), TINY_SAM)


@pytest.fixture(scope="module")
def rendered():
    return list(render_dataset(0, 2, 2, 2, 192, 0.5, workers=2))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_grabcut_from_the_skeleton_finds_the_rendered_hands(rendered):
    grabcut = [iou(M.grabcut_mask(f.image, f.keypoints) > 0, f.mask > 0) for f in rendered]
    skeleton = [iou(M.dilate(M.skeleton_mask(f.keypoints, *f.mask.shape)) > 0, f.mask > 0) for f in rendered]
    assert np.mean(grabcut) > 0.65 and np.mean(grabcut) > np.mean(skeleton) + 0.1


def test_grabcut_is_deterministic_whatever_ran_before(rendered):
    f = rendered[0]
    first = M.grabcut_mask(f.image, f.keypoints)
    cv2.setRNGSeed(1234)
    cv2.randu(np.zeros((8, 8)), 0, 1)  # moves OpenCV's per-thread RNG, which GrabCut's k-means draws from
    assert np.array_equal(first, M.grabcut_mask(f.image, f.keypoints))
    assert not M.grabcut_mask(f.image, schema.empty_keypoints()).any()


def test_skeleton_ignores_absent_joints():
    k = two_hands(100)
    k[21:] = 0
    k[17] = 0  # the little finger's MCP, a palm corner, sits at (0, 0) with confidence 0
    mask = M.skeleton_mask(k, 100, 100)
    assert mask[0, 0] == 0 and mask.any()
