"""Conditioning renderers: a 42x3 keypoint array (and mask) to the channels the DiT sees, one mode per paper."""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from handloom.io import encode_png, write_bytes
from handloom.keypoint_metrics import BONE_CHILDREN, BONE_PARENTS, bone_ratios, visible_joints
from handloom.schema import BONES, FINGERS, HANDS, NUM_KEYPOINTS, hand_rows

CHANNELS = {"heatmaps42": 43, "fingers11": 11, "annotated3": 3}
SIGMA = 1.5  # Gaussian width in pixels of the model's resolution (params.yaml: heatmap_sigma)
TAIL_SIGMAS = 5  # Gaussians end this many sigmas from their centre
FINGER_GRAY = (50, 150, 250, 100, 200)  # Annotated Hands, thumb -> little; not monotone so neighbours differ
HAND_GRAY = {"right": 200, "left": 100}  # Annotated Hands handedness channel
BONES_PER_FINGER = len(BONES) // len(FINGERS)  # BONES lists each finger's chain, thumb first


# --- Geometry shared by the renderers -------------------------------------
def scale_keypoints(keypoints: np.ndarray, image_size: int | tuple[int, int], resolution: int) -> np.ndarray:
    """(42, 2) xy at the model's resolution.

    Pixel centres sit at integer coordinates (OpenCV's convention), so centres map onto centres
    exactly as cv2.resize maps the image and the mask: x' = (x + 0.5) * R / size - 0.5.
    `image_size` is one side of a square crop or (width, height).
    """
    scale = resolution / np.asarray(image_size, np.float32)  # one scale, or (x, y) scales: both broadcast
    return (keypoints[:, :2].astype(np.float32) + 0.5) * scale - 0.5




@lru_cache(maxsize=16)
def _pixel_centres(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Sparse meshgrid (x (1, 1, R), y (1, R, 1)) of pixel centres, built once per resolution."""
    xs, ys = np.meshgrid(np.arange(resolution, dtype=np.float32), np.arange(resolution, dtype=np.float32),
                         sparse=True)
    xs.flags.writeable = ys.flags.writeable = False  # shared through the cache
    return xs[None], ys[None]


def _gaussian(squared_distance: np.ndarray, sigma: float) -> np.ndarray:
    """exp(-d^2 / 2 sigma^2), cut to exactly 0 beyond 5 sigma (below 4e-6): the far tail holds subnormal
    floats, whose arithmetic costs ~100x that of normal ones."""
    cut = np.float32(TAIL_SIGMAS * sigma) ** 2
    g = np.exp(np.minimum(squared_distance, cut) * np.float32(-0.5 / sigma**2))
    g[squared_distance > cut] = 0
    return g


def _joint_heatmaps(xy: np.ndarray, seen: np.ndarray, sigma: float, out: np.ndarray) -> np.ndarray:
    """Gaussians of peak 1 at each seen joint into the zeroed `out` (J, R, R).

    Separable: a row of a joint's heatmap is its column profile times one value of its row profile. Only the
    rows within TAIL_SIGMAS of the joint are written: most of `out` keeps its zeros, and a whole (J, R, R)
    product costs several times a fill. Vectorised over joints and rows.
    """
    resolution = out.shape[-1]
    joints = np.flatnonzero(seen & np.all(np.abs(xy) < 2 * resolution, axis=1))  # NaN or far off: nothing to draw
    x, y = xy[joints].T
    rows = np.rint(y)[:, None] + _window(math.ceil(TAIL_SIGMAS * sigma))  # (J', W) rows near each joint
    inside = (rows >= 0) & (rows < resolution)
    nth, _ = np.nonzero(inside)                                          # (N,) joint of each row inside
    row = rows[inside]                                                   # (N,) that row
    profile = _gaussian((_pixel_centres(resolution)[0][0] - x[:, None]) ** 2, sigma)  # (J', R) along x
    weight = _gaussian((row - y[nth]) ** 2, sigma)                                   # (N,) along y
    out[joints[nth], row.astype(np.intp)] = weight[:, None] * profile[nth]          # (N, R) rows
    return out


@lru_cache(maxsize=4)
def _window(radius: int) -> np.ndarray:
    """Offsets -radius..radius as float32, built once."""
    offsets = np.arange(-radius, radius + 1, dtype=np.float32)
    offsets.flags.writeable = False  # shared through the cache
    return offsets


def _segment_squared_distances(start: np.ndarray, end: np.ndarray, resolution: int) -> np.ndarray:
    """(S, R, R) squared distance from every pixel centre to each segment start -> end."""
    xs, ys = _pixel_centres(resolution)
    rx, ry = xs - start[:, 0, None, None], ys - start[:, 1, None, None]  # (S, 1, R), (S, R, 1)
    dx, dy = (end - start)[:, 0, None, None], (end - start)[:, 1, None, None]
    length2 = dx * dx + dy * dy
    along = rx * dx + ry * dy                                           # (S, R, R) projection on the bone
    t = np.clip(along / np.maximum(length2, 1e-12), 0, 1)               # nearest point's position on it
    # |r - t d|^2 = |r|^2 + t (t |d|^2 - 2 r.d), in place to spare (S, R, R) temporaries
    along *= -2
    along += t * length2
    along *= t
    along += rx * rx
    along += ry * ry
    return np.maximum(along, 0, out=along)  # rounding can dip just below 0 on the bone


def _seen_bones(keypoints: np.ndarray, image_size, resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices into BONE_PARENTS of the bones with both ends seen, and their scaled start and end points."""
    xy = scale_keypoints(keypoints, image_size, resolution)
    seen = visible_joints(keypoints)
    bones = np.flatnonzero(seen[BONE_PARENTS] & seen[BONE_CHILDREN])
    return bones, xy[BONE_PARENTS[bones]], xy[BONE_CHILDREN[bones]]


def _finger_of(bone):
    """Finger (0 thumb .. 4 little) of a bone index into BONE_PARENTS, whichever the hand."""
    return (bone // BONES_PER_FINGER) % len(FINGERS)


def _mask_channel(mask: np.ndarray | None, resolution: int, out: np.ndarray | None = None) -> np.ndarray:
    """The mask as coverage in [0, 1] at the model's resolution, into `out` (R, R); zeros when there is none."""
    out = np.empty((resolution, resolution), np.float32) if out is None else out
    if mask is None:
        out.fill(0)
        return out
    m = np.asarray(mask)
    m = m.view(np.uint8) if m.dtype == bool else m if m.dtype == np.uint8 else m.astype(np.float32)
    scale = 255 if m.dtype == np.uint8 and m.max() > 1 else 1  # PNG masks are 0/255, in-memory ones 0/1
    if m.shape != (resolution, resolution):  # the loader's masks come at the model's resolution already
        # Resizing before converting keeps the per-sample cost at the model's resolution, not the crop's.
        m = cv2.resize(m, (resolution, resolution), interpolation=cv2.INTER_AREA)
    return np.divide(m, np.float32(scale), out=out)


def _output(mode: str, resolution: int, out: np.ndarray | None) -> np.ndarray:
    """The zeroed (CHANNELS[mode], R, R) float32 array to render into: `out` (a new batch's row, say) or a new one."""
    return np.zeros((CHANNELS[mode], resolution, resolution), np.float32) if out is None else out


# --- The three modes -----------------------------------------------------------------------------
def heatmaps42(keypoints: np.ndarray, mask: np.ndarray | None, image_size, resolution: int,
               sigma: float = SIGMA, out: np.ndarray | None = None) -> np.ndarray:
    """FoundHand: (43, R, R) = one Gaussian heatmap per joint of both hands (unseen joint -> zeros) + mask.

    Rendered into `out` when given, which must be zeroed.
    """
    out = _output("heatmaps42", resolution, out)
    _joint_heatmaps(scale_keypoints(keypoints, image_size, resolution), visible_joints(keypoints), sigma, out[:-1])
    _mask_channel(mask, resolution, out[-1])
    return out


def fingers11(keypoints: np.ndarray, mask: np.ndarray | None, image_size, resolution: int,
              sigma: float = SIGMA, rng: np.random.Generator | None = None, p_zero_mask: float = 0.5,
              out: np.ndarray | None = None) -> np.ndarray:
    """Pelykh: (11, R, R) = 10 finger heatmaps (right thumb..little, left thumb..little) + mask.

    Each finger is drawn as Gaussian lines (peak 1 on the bone, falling off with the distance to it)
    along its four bones, wrist -> MCP/CMC -> ... -> tip, so a channel shows the finger's shape and
    not only its joints. A bone is drawn when both its joints are seen. With an `rng` (training) the
    mask channel is zeroed with probability `p_zero_mask`, so the model also learns without a mask.
    """
    out = _output("fingers11", resolution, out)
    bones, start, end = _seen_bones(keypoints, image_size, resolution)
    if len(bones):
        lines = _gaussian(_segment_squared_distances(start, end, resolution), sigma)
        channel_of_bone = bones // BONES_PER_FINGER  # right thumb 0 .. little 4, left thumb 5 .. little 9
        for c in np.unique(channel_of_bone):
            out[c] = lines[channel_of_bone == c].max(axis=0)
    drop_mask = rng is not None and rng.random() < p_zero_mask
    _mask_channel(None if drop_mask else mask, resolution, out[-1])
    return out


def annotated3(keypoints: np.ndarray, image_size, resolution: int, line_width: float | None = None,
               out: np.ndarray | None = None) -> np.ndarray:
    """Annotated Hands (arXiv 2401.15075): (3, R, R) in [0, 1].

    ch0: the 20 bones of each hand drawn in their finger's gray, thumb..little 50, 150, 250, 100, 200 /255.
    ch1: the same pixels at bone length / palm length (see `bone_ratios`), clipped to 1, so the model
         sees each bone's proportion to the hand; a bone longer than the palm saturates.
    ch2: each hand's region (convex hull of its seen joints) at 100 (left) / 200 (right) /255.
    Lines are `line_width` pixels wide (default max(1, R/64)); where bones meet, the nearest one wins.
    """
    line_width = max(1.0, resolution / 64) if line_width is None else line_width
    out = _output("annotated3", resolution, out)
    bones, start, end = _seen_bones(keypoints, image_size, resolution)
    if len(bones):
        d2 = _segment_squared_distances(start, end, resolution)
        nearest, on_line = d2.argmin(axis=0), d2.min(axis=0) <= (line_width / 2) ** 2
        gray = np.asarray(FINGER_GRAY, np.float32)[_finger_of(bones)] / 255
        ratio = np.clip(np.nan_to_num(bone_ratios(keypoints)[bones]), 0, 1).astype(np.float32)
        out[0] = np.where(on_line, gray[nearest], 0)
        out[1] = np.where(on_line, ratio[nearest], 0)
    _handedness_channel(keypoints, image_size, resolution, out[2])
    return out


def _handedness_channel(keypoints: np.ndarray, image_size, resolution: int, channel: np.ndarray) -> np.ndarray:
    """Each hand's convex hull of seen joints in its gray, drawn into the zeroed (R, R) `channel`: the mask alone
    cannot say whose pixel is whose."""
    xy, seen = scale_keypoints(keypoints, image_size, resolution), visible_joints(keypoints)
    for hand in HANDS:
        points = xy[hand_rows(hand)][seen[hand_rows(hand)]]
        if len(points):
            hull = cv2.convexHull(np.round(points * 16).astype(np.int32))  # 4 fractional bits: shift=4
            cv2.fillConvexPoly(channel, hull, HAND_GRAY[hand] / 255, lineType=cv2.LINE_8, shift=4)
    return channel


# One calling convention for every mode, so callers choose a mode by name only.
CONDITIONING = {
    "heatmaps42": lambda k, mask, size, res, rng=None, sigma=SIGMA, out=None:
        heatmaps42(k, mask, size, res, sigma, out=out),
    "fingers11": lambda k, mask, size, res, rng=None, sigma=SIGMA, out=None:
        fingers11(k, mask, size, res, sigma, rng, out=out),
    "annotated3": lambda k, mask, size, res, rng=None, sigma=SIGMA, out=None: annotated3(k, size, res, out=out),
}


def render_conditioning(mode: str, keypoints: np.ndarray, mask: np.ndarray | None, image_size, resolution: int,
                        rng: np.random.Generator | None = None, sigma: float = SIGMA,
                        out: np.ndarray | None = None) -> np.ndarray:
    """(CHANNELS[mode], R, R) float32 conditioning for one sample; `rng` only in training (mask dropout).

    With `out` (a zeroed float32 array of that shape, such as a row of a new batch) it is rendered in place.
    """
    if mode not in CONDITIONING:
        raise ValueError(f"unknown conditioning mode {mode!r}; expected one of {sorted(CONDITIONING)}")
    keypoints = np.asarray(keypoints, np.float32)
    if keypoints.shape != (NUM_KEYPOINTS, 3):
        raise ValueError(f"keypoints must be ({NUM_KEYPOINTS}, 3), got {keypoints.shape}")
    return CONDITIONING[mode](keypoints, mask, image_size, resolution, rng=rng, sigma=sigma, out=out)


# --- Documentation panel -------------------------------------------------------------------------
FINGER_COLORS = np.array([(230, 60, 60), (240, 170, 40), (70, 190, 70), (60, 140, 230), (170, 80, 220)],
                         np.float32) / 255  # RGB, thumb -> little


def _tile(rgb: np.ndarray, label: str, size: int) -> np.ndarray:
    tile = cv2.resize(np.clip(rgb * 255, 0, 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
    cv2.putText(tile, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def _keypoint_overlay(image: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """The image with each seen bone drawn in its finger's colour; RGB in [0, 1]."""
    canvas = np.ascontiguousarray(image[..., :3]).copy()
    seen, points = visible_joints(keypoints), np.round(keypoints[:, :2]).astype(int)
    for b, (p, c) in enumerate(zip(BONE_PARENTS, BONE_CHILDREN)):
        if seen[p] and seen[c]:
            color = (FINGER_COLORS[_finger_of(b)] * 255).tolist()
            cv2.line(canvas, tuple(points[p].tolist()), tuple(points[c].tolist()), color, 2, cv2.LINE_AA)
    return canvas.astype(np.float32) / 255


def render_panel(image: np.ndarray, keypoints: np.ndarray, mask: np.ndarray | None, path: str | Path,
                 resolution: int = 64, tile: int = 256) -> Path:
    """Write a PNG: image + keypoints | heatmaps42 | fingers11 | annotated3's three channels.

    `image` is RGB uint8; conditioning is rendered at `resolution` and shown with nearest-neighbour
    upscaling, so the panel shows exactly what the model receives.
    """
    keypoints = np.asarray(keypoints, np.float32)
    size = (image.shape[1], image.shape[0])
    heat = heatmaps42(keypoints, mask, size, resolution)
    fingers = fingers11(keypoints, mask, size, resolution)
    annotated = annotated3(keypoints, size, resolution)
    joints_rgb = np.stack([heat[:-1].max(0), heat[:-1].max(0) * 0.8, heat[-1] * 0.5], axis=-1)
    colors = np.concatenate([FINGER_COLORS, FINGER_COLORS * 0.6])  # left hand darker
    fingers_rgb = np.maximum((fingers[:-1, ..., None] * colors[:, None, None]).max(0), fingers[-1, ..., None] * 0.3)
    tiles = [_tile(_keypoint_overlay(image, keypoints), "image + keypoints", tile),
             _tile(joints_rgb, "heatmaps42 (max) + mask", tile),
             _tile(fingers_rgb, "fingers11 + mask", tile)]
    tiles += [_tile(np.repeat(annotated[c, ..., None], 3, -1), label, tile)
              for c, label in enumerate(("annotated3 ch0 fingers", "ch1 bone/palm", "ch2 handedness"))]
    path = Path(path)
    write_bytes(path, encode_png(np.concatenate(tiles, axis=1)))
    return path
