"""Square hand crops at a fixed size: one hand centred with context, or touching hands as the union of their boxes."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
MIN_SIDE = 8.0  # a degenerate box (one visible joint) still gets a crop that contains it


def union(boxes: list[Box]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def longer_side(box: Box) -> float:
    return max(box[2] - box[0], box[3] - box[1])


def gap(a: Box, b: Box) -> float:
    """Distance between two boxes along the axis that separates them most; 0 when they overlap."""
    return max(0.0, a[0] - b[2], b[0] - a[2], a[1] - b[3], b[1] - a[3])


def interacting(a: Box, b: Box, gap_ratio: float) -> bool:
    """Hands overlap or nearly touch: cropping them apart would cut one through the other."""
    return gap(a, b) <= gap_ratio * 0.5 * (longer_side(a) + longer_side(b))


def group_hands(boxes: list[Box], rows: list[str | None], gap_ratio: float, together: bool = False) -> list[list[int]]:
    """Indices of hands that share a crop: at most two, never two in the same keypoint rows.

    `rows` is each hand's block of the 42x3 array ('right'/'left'), or None for a box-only hand;
    `together` is a dataset's own word that the hands interact (InterHand2.6M), whatever their distance.
    Pairs merge nearest first, so three hands in a row pair up the way they touch.
    """
    groups = [[i] for i in range(len(boxes))]

    def fits(g: list[int], h: list[int]) -> bool:
        sides = [rows[i] for i in g + h if rows[i] is not None]
        return len(g) + len(h) <= 2 and len(sides) == len(set(sides))

    pairs = sorted((gap(boxes[i], boxes[j]), i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
                   if together or interacting(boxes[i], boxes[j], gap_ratio))
    for _, i, j in pairs:
        gi, gj = next(g for g in groups if i in g), next(g for g in groups if j in g)
        if gi is not gj and fits(gi, gj):
            gi.extend(gj)
            groups.remove(gj)
    return sorted((sorted(g) for g in groups), key=lambda g: g[0])


@dataclass(frozen=True)
class Square:
    """The source-image square a crop is cut from; pixels outside the image are black."""

    x0: int
    y0: int
    side: int

    @classmethod
    def around(cls, box: Box, scale: float) -> "Square":
        side = math.ceil(max(longer_side(box) * scale, MIN_SIDE))
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        return cls(round(cx - side / 2), round(cy - side / 2), side)  # centred to half a source pixel

    def cut(self, image: np.ndarray, size: int) -> np.ndarray:
        """The square resized to size x size: area filter when shrinking, bilinear when enlarging."""
        h, w = image.shape[:2]
        x1, y1 = self.x0 + self.side, self.y0 + self.side
        inside = image[max(self.y0, 0):min(y1, h), max(self.x0, 0):min(x1, w)]
        padded = cv2.copyMakeBorder(inside, max(-self.y0, 0), max(y1 - h, 0), max(-self.x0, 0), max(x1 - w, 0),
                                    cv2.BORDER_CONSTANT, value=0)
        interpolation = cv2.INTER_AREA if self.side > size else cv2.INTER_LINEAR
        return cv2.resize(padded, (size, size), interpolation=interpolation)

    def points(self, xy: np.ndarray, size: int) -> np.ndarray:
        """Source pixel coordinates -> crop pixel coordinates."""
        return (np.asarray(xy, np.float64) - (self.x0, self.y0)) * (size / self.side)

    def box(self, box: Box, size: int) -> Box:
        (x0, y0), (x1, y1) = self.points([box[:2], box[2:]], size)
        return float(x0), float(y0), float(x1), float(y1)

    def keypoints(self, keypoints: np.ndarray, size: int) -> np.ndarray:
        """A 42x3 array in crop pixels; joints without confidence become zero rows (not labelled)."""
        out = np.zeros_like(keypoints, dtype=np.float32)
        seen = keypoints[:, 2] > 0
        out[seen, :2] = self.points(keypoints[seen, :2], size)
        out[seen, 2] = keypoints[seen, 2]
        return out
