"""Keypoint metrics on (..., 42, 3) arrays, torch-free so annotate's pool workers and evaluate share them:
MPJPE, PCK, Pelykh's DAP, detection rate and Annotated Hands' joint-ratio difference."""
from __future__ import annotations

import numpy as np

from handloom.schema import BONES, FINGER_CHAINS, FINGERS, HANDS, JOINTS_PER_HAND, hand_box

# Bones of both hands in row order (right then left), as (parent, child) rows of the 42x3 array.
BONE_PARENTS = np.array([p + h * JOINTS_PER_HAND for h in range(len(HANDS)) for p, _ in BONES])
BONE_CHILDREN = np.array([c + h * JOINTS_PER_HAND for h in range(len(HANDS)) for _, c in BONES])
# The palm's scale: wrist -> MCP of index..little, the bones that barely change with pose.
PALM_BONES = [BONES.index((0, FINGER_CHAINS[f][1])) for f in FINGERS[1:]]


def visible_joints(keypoints: np.ndarray) -> np.ndarray:
    """Joints with positive confidence; absent hands are all-zero rows, so they drop out too."""
    return keypoints[..., 2] > 0


def bone_ratios(keypoints: np.ndarray) -> np.ndarray:
    """(..., 40) bone length / palm length per bone of both hands; NaN where a bone or the palm is unseen.

    The palm length is the mean of the wrist -> index..little MCP bones of the same hand. Ratios to
    it are scale-free, so a generated hand and its target compare whatever their size in the image.
    """
    k = np.asarray(keypoints, np.float64)
    seen = visible_joints(k)[..., BONE_PARENTS] & visible_joints(k)[..., BONE_CHILDREN]
    length = np.linalg.norm(k[..., BONE_CHILDREN, :2] - k[..., BONE_PARENTS, :2], axis=-1)
    length = np.where(seen, length, np.nan).reshape(*k.shape[:-2], len(HANDS), len(BONES))
    palm = length[..., PALM_BONES]
    counted = np.sum(~np.isnan(palm), axis=-1, keepdims=True)
    palm_length = np.where(counted > 0, np.nansum(palm, axis=-1, keepdims=True) / np.maximum(counted, 1), np.nan)
    ratio = length / np.where(palm_length > 0, palm_length, np.nan)
    return ratio.reshape(*k.shape[:-2], len(BONE_PARENTS))


# --- Keypoints: (..., 42, 3) arrays, pooled over every joint counted -----------------------------
def _joint_errors(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(pred, np.float64)[..., :2] - np.asarray(gt, np.float64)[..., :2], axis=-1)


def _mean_or_nan(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def mpjpe(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean per-joint position error in pixels over joints seen in both (confidence > 0); NaN if none."""
    both = visible_joints(pred) & visible_joints(gt)
    return _mean_or_nan(_joint_errors(pred, gt)[both])


def _hand_box_sizes(gt: np.ndarray) -> np.ndarray:
    """(..., 42) max side of the tight box of each joint's hand in the ground truth (NaN: hand absent)."""
    gt = np.asarray(gt)
    flat = gt.reshape(-1, *gt.shape[-2:])
    sizes = np.full(flat.shape[:2], np.nan)
    for i, keypoints in enumerate(flat):
        for h, hand in enumerate(HANDS):
            box = hand_box(keypoints, hand)
            if box is not None:
                sizes[i, h * JOINTS_PER_HAND:(h + 1) * JOINTS_PER_HAND] = max(box[2] - box[0], box[3] - box[1])
    return sizes.reshape(gt.shape[:-1])


def _correct_joints(pred: np.ndarray, gt: np.ndarray, threshold: float) -> np.ndarray:
    """Joints seen in both that lie within threshold x their ground-truth hand box size."""
    both = visible_joints(pred) & visible_joints(gt)
    return both & (_joint_errors(pred, gt) <= threshold * _hand_box_sizes(gt))


def pck(pred: np.ndarray, gt: np.ndarray, threshold: float) -> float:
    """Share of joints seen in both within threshold x the ground-truth hand's box size (max side)."""
    counted = visible_joints(pred) & visible_joints(gt)
    return _mean_or_nan(_correct_joints(pred, gt, threshold)[counted])


def dap(pred: np.ndarray, gt: np.ndarray, threshold: float) -> float:
    """Pelykh's detection-aware PCK: PCK over every joint the ground truth shows.

    A joint (or whole hand) the detector did not find in the generated image counts as a failure
    instead of dropping out, so a model cannot score well by producing hands nobody detects.
    Hands found in the generated image but absent from the ground truth are not scored. dap <= pck.
    """
    return _mean_or_nan(_correct_joints(pred, gt, threshold)[visible_joints(gt)])


def detection_rate(pred: np.ndarray, gt: np.ndarray) -> float:
    """Share of ground-truth hands that the prediction has in the same handedness slot; NaN without any."""
    def present(k):
        k = np.asarray(k).reshape(-1, len(HANDS), JOINTS_PER_HAND, 3)
        return np.any(k != 0, axis=(2, 3))  # (N, 2): an all-zero hand is absent
    in_gt = present(gt)
    return float(present(pred)[in_gt].mean()) if in_gt.any() else float("nan")


def joint_ratio_difference(pred: np.ndarray, gt: np.ndarray) -> float:
    """Annotated Hands' mean joint-ratio difference: mean |ratio_pred - ratio_gt| over bones seen in both.

    A bone's ratio is its length over the palm length of its hand (`conditioning.bone_ratios`), so
    the metric measures proportions (a stretched finger, a short thumb), not position or scale.
    """
    difference = np.abs(bone_ratios(pred) - bone_ratios(gt))
    return _mean_or_nan(difference[~np.isnan(difference)])
