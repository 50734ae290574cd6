"""Drawing helpers every package shares: keypoint overlays, pose skeletons, image grids, markdown tables."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from handloom import schema
from handloom.io import encode_png, write_bytes

GT_COLOR, MP_COLOR = (40, 220, 40), (230, 40, 40)


def draw_keypoints(image: np.ndarray, keypoints: np.ndarray, color, scale: float = 1.0) -> np.ndarray:
    """Bones and joints of both hands over a copy of `image`."""
    out = image.copy()
    k = keypoints.astype(np.float32) * np.float32([scale, scale, 1])
    thickness = max(1, image.shape[0] // 128)
    for a, b in schema.BONES + tuple((a + 21, b + 21) for a, b in schema.BONES):
        if k[a, 2] > 0 and k[b, 2] > 0:
            cv2.line(out, tuple(map(int, k[a, :2])), tuple(map(int, k[b, :2])), color, thickness, cv2.LINE_AA)
    for x, y, c in k:
        if c > 0:
            cv2.circle(out, (int(x), int(y)), thickness + 1, color, -1, cv2.LINE_AA)
    return out


def pose_image(keypoints: np.ndarray, size: int, scale: float) -> np.ndarray:
    """The target pose as a skeleton on black: what the model is asked to follow."""
    return draw_keypoints(np.zeros((size, size, 3), np.uint8), keypoints, (255, 255, 255), scale)


def tile(rows: list[list[np.ndarray]], size: int, header: list[str] | None = None) -> np.ndarray:
    """A grid of equally sized cells with an optional header row of column titles."""
    cells = [[cv2.resize(c, (size, size), interpolation=cv2.INTER_NEAREST) for c in r] for r in rows]
    grid = np.concatenate([np.concatenate(r, axis=1) for r in cells], axis=0)
    if header:
        bar = np.full((24, grid.shape[1], 3), 255, np.uint8)
        for i, title in enumerate(header):
            cv2.putText(bar, title, (i * size + 4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        grid = np.concatenate([bar, grid], axis=0)
    return grid


def save_png(path: Path, image: np.ndarray) -> None:
    write_bytes(path, encode_png(image))


NO_VALUE = "–"  # a metric without a value (null in metrics.json: e.g. MPJPE when no hand was detected)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return NO_VALUE
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
