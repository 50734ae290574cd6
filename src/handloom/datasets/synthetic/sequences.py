"""Sequences of posed hands seen by several cameras: images with exact keypoints and masks."""
from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import dataclass
from functools import partial
from typing import Iterator, NamedTuple

import cv2
import numpy as np
from tqdm import tqdm

from handloom.datasets.synthetic.appearance import Look, background, shade
from handloom.datasets.synthetic.hand import (
    MIRROR,
    HandShape,
    articulate,
    rotation,
    sample_pose,
)
from handloom.datasets.synthetic.primitives import (
    forearm_primitives,
    hand_primitives,
    transform,
)
from handloom.datasets.synthetic.raycast import Camera, Canvas, look_at
from handloom.schema import HANDS, JOINTS_PER_HAND, empty_keypoints, hand_rows


# --- Sequences ---------------------------------------------------------------------------------
@dataclass
class SyntheticFrame:
    sequence: str          # e.g. "seq00007"
    frame: int
    camera: str            # e.g. "0", "1", "2"
    image: np.ndarray      # (S, S, 3) uint8 RGB
    mask: np.ndarray       # (S, S) uint8, 255 = hand
    keypoints: np.ndarray  # (42, 3) float32, unified layout
    handedness: tuple[str, ...]   # ("right",), ("left",) or ("right", "left")
    metadata: dict         # json-serialisable: skin tone, background kind, camera params, interacting, ...
    joints3d: np.ndarray   # (42, 3) float32 world millimetres, same rows as keypoints (zeros = absent)


@dataclass
class HandTrack:
    """One hand's motion through a sequence: keyframed joint angles and wrist angles, and its placement."""

    hand: str
    gestures: list[str]
    poses: np.ndarray      # (K, 20) keyframe joint angles
    wrists: np.ndarray     # (K, 3) wrist flexion, deviation, pronation (degrees)
    rotation: np.ndarray   # forearm placement in the world
    position: np.ndarray

    @classmethod
    def sample(cls, rng, hand: str, n_keys: int, rotation, position) -> "HandTrack":
        gestures, poses = zip(*(sample_pose(rng) for _ in range(n_keys)))
        wrists = np.clip(rng.normal(0, [12, 6, 14], (n_keys, 3)), [-25, -10, -30], [25, 10, 30])
        return cls(hand, list(gestures), np.array(poses), wrists, np.asarray(rotation, float),
                   np.asarray(position, float))

    def at(self, u: float) -> tuple[np.ndarray, np.ndarray, str]:
        """Joint angles, wrist angles and nearest gesture at time u in [0, 1]: cosine easing between
        keyframes, so motion is smooth and every frame stays inside the (convex) joint limits."""
        x = u * (len(self.poses) - 1)
        k = min(int(x), len(self.poses) - 2)
        w = (1 - np.cos(np.pi * (x - k))) / 2
        mix = lambda a: a[k] * (1 - w) + a[k + 1] * w  # noqa: E731
        return mix(self.poses), mix(self.wrists), self.gestures[int(round(x))]

    def placement(self, wrist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hand and forearm linear maps from the right-hand frame to the world (mirrored for the left)."""
        flexion, deviation, pronation = wrist
        forearm = self.rotation @ rotation((0, 1, 0), pronation)
        hand = forearm @ rotation((1, 0, 0), flexion) @ rotation((0, 0, 1), deviation)
        mirror = MIRROR if self.hand == "left" else np.eye(3)
        return hand @ mirror, forearm @ mirror


def _arrangement(rng, scale: float, two_hands: bool) -> tuple[str, list[tuple[str, np.ndarray, np.ndarray]]]:
    """Where the hands are: palms face +z in the world, fingers +y. Seen from the palm side a right
    hand sits to the right of a left one (thumbs outwards)."""
    if not two_hands:
        hand = "right" if rng.random() < 0.5 else "left"
        return "single", [(hand, rotation((0, 0, 1), rng.normal(0, 10)), np.zeros(3))]
    kind = str(rng.choice(["side_by_side", "overlapping", "fingertips"], p=[0.5, 0.25, 0.25]))
    if kind == "fingertips":  # fingers pointing at each other, tips nearly touching
        gap, tilt = rng.uniform(370, 410) * scale, rng.normal(0, 10)
        return kind, [("right", rotation((0, 0, 1), 90 + tilt), np.array([gap / 2, 0, 0])),
                      ("left", rotation((0, 0, 1), -90 + tilt), np.array([-gap / 2, 0, 0]))]
    # little fingers face each other; "overlapping" puts one hand partly in front of the other
    gap = rng.uniform(120, 170) * scale if kind == "side_by_side" else rng.uniform(85, 110) * scale
    depth = 0.0 if kind == "side_by_side" else rng.choice([-1, 1]) * rng.uniform(40, 60) * scale
    lean = rng.uniform(-15, 8)  # > 0: fingertips lean towards each other
    return kind, [("right", rotation((0, 0, 1), lean), np.array([gap / 2, rng.normal(0, 10), depth / 2])),
                  ("left", rotation((0, 0, 1), -lean), np.array([-gap / 2, rng.normal(0, 10), -depth / 2]))]


def _place_cameras(rng, n_cameras: int, joints: np.ndarray, size: int, two_hands: bool) -> list[tuple[Camera, str]]:
    """Cameras around the palm (+z) or back (-z) side, tilted at most ~45°, each framing every frame's
    joints so the hands fill 40-70 % of the image (two hands: their union 60-85 %)."""
    target = joints.reshape(-1, 3).mean(0)
    cameras = []
    for _ in range(n_cameras):
        side = "palm" if rng.random() < 0.5 else "back"
        tilt, azimuth = min(abs(rng.normal(0, 22)), 45), rng.uniform(0, 360)
        axis = rotation((0, 0, 1), azimuth) @ np.array([1.0, 0, 0])
        direction = rotation(axis, tilt) @ np.array([0, 0, 1.0 if side == "palm" else -1.0])
        position = target + direction * rng.uniform(350, 700)
        camera = look_at(position, target, (0, 1, 0), float(np.clip(rng.normal(0, 25), -60, 60)), np.eye(3), size)
        uv = camera.project(joints.reshape(-1, 3))  # normalised image coordinates
        lo, hi = uv.min(0), uv.max(0)
        fill = rng.uniform(0.65, 0.85) if two_hands else rng.uniform(0.42, 0.68)
        focal = fill * size / (hi - lo).max()
        slack = (size - focal * (hi - lo)) / 2
        center = size / 2 - focal * (lo + hi) / 2 + rng.uniform(-0.3, 0.3, 2) * slack
        camera.K = np.array([[focal, 0, center[0]], [0, focal, center[1]], [0, 0, 1]])
        cameras.append((camera, side))
    return cameras


def _postprocess(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise and a touch of defocus, then 8-bit RGB."""
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 0.8) * image.shape[0] / 256)
    image = image + rng.normal(0, rng.uniform(0.004, 0.015), image.shape).astype(np.float32)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


BLEND_MM = 4.0  # how far the shading of one part blends into the next


def _render_view(camera: Camera, prims: list[tuple[object, int]], placements, look: Look,
                 backdrop: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """Ray-cast the hands on a supersampled grid, composite them over the backdrop with a soft drop
    shadow and expose for the hands; returns the RGB image and the exact silhouette."""
    ss = int(np.clip(512 // camera.size, 1, 4))  # a ~512 px ray grid: anti-aliased, affordable at any size
    canvas = Canvas(camera, ss)
    for prim, hand in prims:
        canvas.draw(transform(prim, camera.R, camera.t), hand)
    canvas.smooth_normals(BLEND_MM)
    color = shade(canvas, look, placements)
    size = camera.size
    coverage = cv2.resize(np.isfinite(canvas.depth).astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    premultiplied = cv2.resize(color, (size, size), interpolation=cv2.INTER_AREA)
    shift = rng.uniform(-0.03, 0.03, 2) * size
    shadow = cv2.warpAffine(coverage, np.array([[1, 0, shift[0]], [0, 1, shift[1]]], np.float32), (size, size))
    shadow = cv2.GaussianBlur(shadow, (0, 0), size / 40) * rng.uniform(0.15, 0.4)
    image = backdrop * (1 - shadow[..., None]) * (1 - coverage[..., None]) + premultiplied
    hand_level = premultiplied.mean(-1).sum() / max(coverage.sum(), 1)
    image *= np.clip(0.35 / max(hand_level, 1e-3), 1, 1.7)  # auto-exposure on the subject, as a camera would
    return _postprocess(image, rng), np.where(coverage >= 0.5, 255, 0).astype(np.uint8)


def render_sequence(seed: int, index: int, n_frames: int = 8, n_cameras: int = 3, image_size: int = 256,
                    two_hand_prob: float = 0.2) -> list[SyntheticFrame]:
    """Sequence `index` of dataset `seed`: every frame seen by every camera, from rng([seed, index]) alone."""
    rng = np.random.default_rng([seed, index])
    shape, look = HandShape.sample(rng), Look.sample(rng)
    kind, layout = _arrangement(rng, shape.scale, rng.random() < two_hand_prob)
    n_keys = 2 + n_frames // 6
    tracks = [HandTrack.sample(rng, hand, n_keys, rotation, position) for hand, rotation, position in layout]
    times = np.linspace(0, 1, n_frames) if n_frames > 1 else np.zeros(1)
    states = [[_hand_state(track, shape, look, u) for track in tracks] for u in times]
    all_joints = np.array([[hand.joints for hand in frame_states] for frame_states in states])
    cameras = _place_cameras(rng, n_cameras, all_joints, image_size, len(tracks) == 2)
    backdrops = [background(look.background, image_size, look.skin, rng) for _ in cameras]
    handedness = tuple(h for h in HANDS if any(t.hand == h for t in tracks))
    frames = []
    for f, frame_states in enumerate(states):
        prims = [(p, HANDS.index(t.hand)) for t, hand in zip(tracks, frame_states) for p in hand.primitives]
        placements: list = [None, None]
        joints3d = np.zeros((2 * JOINTS_PER_HAND, 3), np.float32)
        for t, hand in zip(tracks, frame_states):
            placements[HANDS.index(t.hand)] = hand.placement
            joints3d[hand_rows(t.hand)] = hand.joints
        for c, (camera, side) in enumerate(cameras):
            image, mask = _render_view(camera, prims, placements, look, backdrops[c], rng)
            metadata = dict(
                skin_tone=(look.skin * 255).round().astype(int).tolist(), background=look.background,
                camera_params=camera.metadata(), view=side, interacting=len(tracks) == 2, arrangement=kind,
                gesture=frame_states[0].gesture, gestures={t.hand: s.gesture for t, s in zip(tracks, frame_states)},
                sleeve=look.sleeve is not None, hand_scale=round(shape.scale, 3))
            frames.append(SyntheticFrame(f"seq{index:05d}", f, str(c), image, mask,
                                         _keypoints(camera, joints3d, image_size), handedness, metadata, joints3d))
    return frames


class HandState(NamedTuple):
    """One hand at one instant, in the world."""

    joints: np.ndarray       # (21, 3) mm
    primitives: list
    placement: tuple[np.ndarray, np.ndarray]  # linear map and origin of the unit-scale right-hand frame
    gesture: str


def _hand_state(track: HandTrack, shape: HandShape, look: Look, u: float) -> HandState:
    pose, wrist, gesture = track.at(u)
    local, chains = articulate(pose, shape)
    hand_map, forearm_map = track.placement(wrist)
    prims = [transform(p, hand_map, track.position) for p in hand_primitives(chains, shape)]
    prims += [transform(p, forearm_map, track.position) for p in forearm_primitives(shape, look.sleeve is not None)]
    return HandState(local @ hand_map.T + track.position, prims, (hand_map * shape.scale, track.position), gesture)


def _keypoints(camera: Camera, joints3d: np.ndarray, size: int) -> np.ndarray:
    """Projected joints in the unified layout; visibility 1 inside the image, absent hands stay zero."""
    k = empty_keypoints()
    for h in HANDS:
        rows = hand_rows(h)
        if np.any(joints3d[rows]):
            uv = camera.project(joints3d[rows].astype(np.float64))
            inside = np.all((uv >= 0) & (uv < size), axis=1)
            k[rows] = np.column_stack([uv, inside]).astype(np.float32)
    return k


def render_dataset(seed: int = 0, n_sequences: int = 24, n_frames: int = 8, n_cameras: int = 3,
                   image_size: int = 256, two_hand_prob: float = 0.2, workers: int | None = None
                   ) -> Iterator[SyntheticFrame]:
    """Every frame of sequences 0..n-1, in order, with a progress bar; sequences render in parallel.

    Each sequence depends only on (seed, index), so the pool changes the speed, never the frames.
    """
    render = partial(render_sequence, seed, n_frames=n_frames, n_cameras=n_cameras, image_size=image_size,
                     two_hand_prob=two_hand_prob)
    workers = min(workers or os.cpu_count() or 1, n_sequences)
    with tqdm(total=n_sequences * n_frames * n_cameras, desc="rendering hands", unit="img") as bar:
        if workers == 1:
            sequences = map(render, range(n_sequences))
        else:  # spawn: a forked numpy/OpenCV thread pool can deadlock the child
            pool = mp.get_context("spawn").Pool(workers)
            sequences = pool.imap(render, range(n_sequences))
        try:
            for sequence in sequences:
                bar.update(len(sequence))
                yield from sequence
        finally:
            if workers > 1:
                pool.terminate()


