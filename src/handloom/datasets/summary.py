"""Counts per ingested dataset as a markdown table, and keypoint overlays to check joint order by eye."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from handloom import schema
from handloom.datasets.store import iter_images, keypoints_array, read_manifest, read_rejects
from handloom.draw import markdown_table, save_png, tile
from handloom.io import decode_image, write_bytes

# One colour per finger (RGB), thumb -> little, so a swapped finger or a reversed chain shows at a glance.
FINGER_COLOURS = ((230, 40, 40), (255, 150, 0), (240, 230, 0), (40, 200, 60), (40, 120, 255))
BOX_COLOUR = (230, 200, 0)
COLUMNS = ["dataset", "samples", "hands", "right", "left", "unknown side", "two-hand crops", "train", "val", "test",
           "rejects", "reject reasons"]


def dataset_counts(dataset_dir: Path) -> dict:
    """One row of the table: samples, hands by side, splits and rejects by reason."""
    manifest, rejects = read_manifest(dataset_dir), read_rejects(dataset_dir)
    metadata = [json.loads(m) for m in manifest["metadata"]]
    hands = sum(len(m["records"]) for m in metadata)
    sides = Counter(side for m in metadata for side in m["handedness"])
    splits = Counter(manifest["split"])
    reasons = Counter(rejects["reason"])
    return {
        "dataset": dataset_dir.name, "samples": len(manifest), "hands": hands, "right": sides["right"],
        "left": sides["left"], "unknown side": hands - sides["right"] - sides["left"],
        "two-hand crops": sum(len(m["records"]) == 2 for m in metadata),
        **{s: splits[s] for s in schema.SPLITS}, "rejects": len(rejects),
        "reject reasons": ", ".join(f"{r} {n}" for r, n in sorted(reasons.items())) or "-",
    }


def counts_table(dataset_dirs: list[Path]) -> str:
    rows = [dataset_counts(d) for d in dataset_dirs]
    return markdown_table(rows, COLUMNS)


def draw_joint_order(image: np.ndarray, keypoints: np.ndarray | None, handedness: list[str]) -> np.ndarray:
    """Bones coloured per finger, the wrist ringed in white and labelled R/L (? if unknown), fingertips numbered."""
    out = image.copy()
    if keypoints is None:
        return out
    scale = max(1, out.shape[0] // 256)
    for hand in schema.HANDS:
        k = keypoints[schema.hand_rows(hand)]
        for f, chain in enumerate(schema.FINGER_CHAINS.values()):
            for a, b in zip(chain, chain[1:]):
                if k[a, 2] > 0 and k[b, 2] > 0:
                    cv2.line(out, _pt(k[a]), _pt(k[b]), FINGER_COLOURS[f], 2 * scale, cv2.LINE_AA)
            tip = chain[-1]
            if k[tip, 2] > 0:
                _label(out, str(tip), _pt(k[tip]), FINGER_COLOURS[f], scale)
        if k[0, 2] > 0:
            cv2.circle(out, _pt(k[0]), 5 * scale, (255, 255, 255), 2 * scale, cv2.LINE_AA)
            _label(out, hand[0].upper() if hand in handedness else "?", _pt(k[0]), (255, 255, 255), scale)
    return out


def _pt(joint) -> tuple[int, int]:
    return int(round(float(joint[0]))), int(round(float(joint[1])))


def _label(image: np.ndarray, text: str, at: tuple[int, int], colour, scale: int) -> None:
    org = (at[0] + 4 * scale, at[1] - 4 * scale)
    cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.45 * scale, (0, 0, 0), 3 * scale, cv2.LINE_AA)
    cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.45 * scale, colour, scale, cv2.LINE_AA)


def overlay_cell(dataset_dir: Path, size: int = 256) -> tuple[np.ndarray, str]:
    """The first two-hand sample of a dataset (else its first sample), drawn, with a caption."""
    manifest = read_manifest(dataset_dir)
    metadata = [json.loads(m) for m in manifest["metadata"]]
    pick = next((i for i, m in enumerate(metadata) if len(m["records"]) == 2), 0)
    row, meta = manifest.iloc[pick], metadata[pick]
    jpeg = next(j for key, j, _ in iter_images(dataset_dir) if key == row["key"])
    image = decode_image(jpeg)
    drawn = draw_joint_order(image, keypoints_array(row["gt_keypoints"]), meta["handedness"])
    if row["gt_keypoints"] is None:  # box-only dataset: show the box the crop was made around
        x0, y0, x1, y1 = map(int, row["bbox"])
        cv2.rectangle(drawn, (x0, y0), (x1, y1), BOX_COLOUR, 2)
    caption = f"{row['dataset']} {'+'.join(meta['handedness']) or 'side?'} {meta.get('gesture', '')}".strip()
    return cv2.resize(drawn, (size, size), interpolation=cv2.INTER_AREA), caption


def render_overlays(dataset_dirs: list[Path], path: Path, size: int = 256, per_row: int = 4) -> None:
    """A grid of one sample per dataset plus a legend cell, written as a PNG."""
    cells, captions = zip(*(overlay_cell(d, size) for d in dataset_dirs))
    cells, captions = [*cells, _legend(size)], [*captions, "legend"]
    rows = []
    for start in range(0, len(cells), per_row):
        chunk = [_captioned(c, t) for c, t in zip(cells[start:start + per_row], captions[start:start + per_row])]
        chunk += [np.full_like(chunk[0], 255)] * (per_row - len(chunk))
        rows.append(chunk)
    save_png(path, tile(rows, size))


def _captioned(cell: np.ndarray, caption: str) -> np.ndarray:
    out = cell.copy()
    cv2.rectangle(out, (0, 0), (out.shape[1], 22), (255, 255, 255), -1)
    cv2.putText(out, caption, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def _legend(size: int) -> np.ndarray:
    out = np.full((size, size, 3), 255, np.uint8)
    lines = [(name, colour) for name, colour in zip(schema.FINGERS, FINGER_COLOURS)]
    lines += [("wrist: white ring, R/L/?", (0, 0, 0)), ("tip numbers: 4 8 12 16 20", (0, 0, 0)),
              ("yellow: HaGRID hand box", BOX_COLOUR)]
    step = (size - 40) // len(lines)
    for i, (text, colour) in enumerate(lines):
        cv2.putText(out, text, (10, 40 + step * i), cv2.FONT_HERSHEY_SIMPLEX, size / 640, colour, 1 + size // 256,
                    cv2.LINE_AA)
    return out


def write_summary(dataset_dirs: list[Path], table_path: Path, title: str) -> None:
    write_bytes(table_path, f"# {title}\n\n{counts_table(dataset_dirs)}\n".encode())
