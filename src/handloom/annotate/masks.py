"""Hand masks behind one interface: the dataset's exact mask, or one drawn from the keypoint skeleton."""
from __future__ import annotations

import cv2
import numpy as np

from handloom import schema


def skeleton_mask(keypoints: np.ndarray, height: int, width: int) -> np.ndarray:
    """Convex hull of the palm plus thick bones: a coarse mask when no exact one exists."""
    mask = np.zeros((height, width), np.uint8)
    for hand in schema.HANDS:
        k = keypoints[schema.hand_rows(hand)]
        if not np.any(k[:, 2] > 0):
            continue
        box = schema.hand_box(keypoints, hand)
        thickness = max(2, int(0.12 * max(box[2] - box[0], box[3] - box[1])))
        palm = k[[0, 1, 5, 9, 13, 17], :2].astype(np.int32)
        cv2.fillConvexPoly(mask, cv2.convexHull(palm), 255)
        for a, b in schema.BONES:
            if k[a, 2] > 0 and k[b, 2] > 0:
                cv2.line(mask, tuple(map(int, k[a, :2])), tuple(map(int, k[b, :2])), 255, thickness)
    return mask


def dilate(mask: np.ndarray, size: int = 5) -> np.ndarray:
    """5x5 dilation as FoundHand does, so the mask covers the hand's edge."""
    return cv2.dilate(mask, np.ones((size, size), np.uint8))
