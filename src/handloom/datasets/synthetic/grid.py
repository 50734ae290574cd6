"""A PNG grid of rendered frames with ground truth and other keypoint sets drawn over them."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from handloom.datasets.synthetic.sequences import SyntheticFrame

# --- Inspection --------------------------------------------------------------------------------
GRID_COLORS = ((0, 220, 0), (230, 30, 30), (40, 90, 255), (240, 200, 0))  # RGB: ground truth first


def frames_grid(frames: list[SyntheticFrame], path: str | Path,
                keypoint_sets: dict[str, list[np.ndarray]] | None = None, columns: int = 6) -> None:
    """A PNG grid of the frames with ground truth (green) and each extra keypoint set drawn over them."""
    from handloom.draw import draw_keypoints
    from handloom.io import encode_png, write_bytes

    sets = {"ground truth": [f.keypoints for f in frames], **(keypoint_sets or {})}
    tile = max(frames[0].image.shape[0], 192)
    tiles = []
    for i, f in enumerate(frames):
        img = cv2.resize(f.image, (tile, tile), interpolation=cv2.INTER_CUBIC)
        zoom = tile / f.image.shape[0]
        for color, kps in zip(GRID_COLORS, sets.values()):
            img = draw_keypoints(img, kps[i], color, zoom)
        cv2.putText(img, f"{f.sequence} f{f.frame} c{f.camera} {'+'.join(f.handedness)}", (3, 12),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(img)
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % columns)
    rows = [np.hstack(tiles[r:r + columns]) for r in range(0, len(tiles), columns)]
    legend = np.zeros((18, rows[0].shape[1], 3), np.uint8)
    for j, (name, color) in enumerate(zip(sets, GRID_COLORS)):
        cv2.putText(legend, name, (5 + 150 * j, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1, cv2.LINE_AA)
    write_bytes(path, encode_png(np.vstack([legend, *rows])))
