"""FoundHand's augmentations (gamma, flip with a left-right hand swap, crop) on image, mask and 42x3 keypoints."""
from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from handloom.params import AugmentParams
from handloom.schema import hand_rows

UNIT_LEVELS = np.arange(256) / 255  # uint8 levels as fractions of full scale

@dataclass(frozen=True)
class Transform:
    """One draw: a square crop (x0, y0, side) in source pixels or None, a mirror, and a gamma."""

    crop: tuple[int, int, int] | None = None
    flip: bool = False
    gamma: float = 1.0


def present_rows(keypoints: np.ndarray) -> np.ndarray:
    """All-zero rows mean "absent" (schema); moving them would invent joints at the image border."""
    return np.any(keypoints != 0, axis=1)


def swap_hands(keypoints: np.ndarray) -> np.ndarray:
    """Rows 0-20 (right) and 21-41 (left) trade places: which hand is which, nothing moves."""
    return np.concatenate([keypoints[hand_rows("left")], keypoints[hand_rows("right")]])


def mirror_x(keypoints: np.ndarray, width: int) -> np.ndarray:
    """x -> width - 1 - x: pixel centres sit at integers, so mirroring maps centres onto centres."""
    k = keypoints.copy()
    rows = present_rows(k)
    k[rows, 0] = width - 1 - k[rows, 0]
    return k


def flip(sample: dict) -> dict:
    """Horizontal flip. A mirrored right hand is a left hand, so the keypoint blocks swap with the pixels."""
    width = sample["image"].shape[1]
    return dict(sample, image=cv2.flip(sample["image"], 1), mask=cv2.flip(sample["mask"], 1),
                keypoints=swap_hands(mirror_x(sample["keypoints"], width)))


def crop(sample: dict, x0: int, y0: int, side: int, size: int | None = None, mirror: bool = False) -> dict:
    """A square window resampled to `size` x `size` pixels (default: the sample's own size, as RandomResizedCrop
    does), then flipped with `mirror` (as `flip` would); keypoints move and scale with it, and those it cuts
    off become unseen.

    The loader passes the model's resolution: one resample straight to it costs a fraction of one back to the
    image's size followed by a second down to the model's, and flip and gamma then run on the small image.
    """
    size = size or min(sample["image"].shape[:2])
    window = np.s_[y0:y0 + side, x0:x0 + side]
    # Bilinear's 2x2 footprint covers an output pixel's source pixels down to a 2x shrink (at 2x it is their
    # mean, as INTER_AREA's); further down it would skip pixels, and INTER_AREA's general path costs ~6x more.
    interpolation = cv2.INTER_LINEAR if side <= 2 * size else cv2.INTER_AREA
    image, mask = (cv2.resize(a[window], (size, size), interpolation=interpolation)
                   for a in (sample["image"], sample["mask"]))
    if mirror:
        image, mask = cv2.flip(image, 1), cv2.flip(mask, 1)
    return dict(sample, image=image, mask=mask, keypoints=crop_keypoints(sample["keypoints"], x0, y0, side, size,
                                                                         mirror))


def crop_keypoints(keypoints: np.ndarray, x0: int, y0: int, side: int, size: int, mirror: bool) -> np.ndarray:
    """`crop`'s keypoints: moved and scaled, unseen where cut off, then mirrored (`flip`'s) with `mirror`."""
    # Pixel centres map onto centres, as cv2.resize maps them: x' = (x - x0 + 0.5) * size / side - 0.5.
    xy = (keypoints[:, :2] - np.float32([x0, y0]) + np.float32(0.5)) * np.float32(size / side) - np.float32(0.5)
    inside = np.all((xy >= -0.5) & (xy < size - 0.5), axis=1)
    if mirror:
        xy[:, 0] = size - 1 - xy[:, 0]
    moved = np.concatenate([xy, np.where(inside, keypoints[:, 2], 0)[:, None]], axis=1)
    moved[~present_rows(keypoints)] = 0  # absent rows stay all-zero
    return swap_hands(moved) if mirror else moved


def adjust_gamma(image: np.ndarray, gamma: float) -> np.ndarray:
    """Pixel-wise (v / 255) ** gamma through a 256-entry table; the mask and keypoints do not change."""
    table = np.round(255 * UNIT_LEVELS ** gamma).astype(np.uint8)
    return cv2.LUT(image, table)


def draw(rng: np.random.Generator, p: AugmentParams, height: int, width: int) -> Transform:
    """A random Transform of an image of that size; ranges and probabilities come from params."""
    side = max(1, round(rng.uniform(*p.crop_scale) * min(height, width)))
    x0, y0 = int(rng.integers(width - side + 1)), int(rng.integers(height - side + 1))
    window = None if (side, side) == (height, width) else (x0, y0, side)
    return Transform(window, bool(rng.random() < p.p_flip), float(np.exp(rng.uniform(*np.log(p.gamma)))))


def apply(sample: dict, t: Transform, size: int | None = None) -> dict:
    """Crop, then flip, then gamma (pixels only); with `size`, the result is `size` x `size` pixels."""
    if size:  # the loader's path: one resample to `size`, mirrored on the way
        sample = crop(sample, *(t.crop or (0, 0, min(sample["image"].shape[:2]))), size=size, mirror=t.flip)
    else:
        sample = sample if t.crop is None else crop(sample, *t.crop)
        sample = flip(sample) if t.flip else sample
    if t.gamma != 1:
        sample = dict(sample, image=adjust_gamma(sample["image"], t.gamma))
    return sample


def augment_pair(reference: dict, target: dict, kind: str, p: AugmentParams, rng: np.random.Generator,
                 size: int | None = None) -> tuple[dict, dict]:
    """Augment a training pair; with `size`, both come out `size` x `size` pixels (see `crop`).

    Self pairs: the target is an augmented copy of the reference (FoundHand), so it gets its own draw.
    Pose and view pairs show one hand under one light: flip and gamma are shared (a flip on one side only
    would turn the hand into the other one), and each image gets its own crop.
    """
    t = draw(rng, p, *reference["image"].shape[:2])
    u = draw(rng, p, *target["image"].shape[:2])
    if kind != "self":
        u = replace(u, flip=t.flip, gamma=t.gamma)
    return apply(reference, t, size), apply(target, u, size)
