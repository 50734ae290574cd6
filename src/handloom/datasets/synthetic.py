"""The embedded default dataset: multi-view sequences of a procedural 3D hand, ray-cast with numpy, exact labels."""
from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterator, NamedTuple

import cv2
import numpy as np
from tqdm import tqdm

from handloom.schema import FINGERS, HANDS, JOINTS_PER_HAND, empty_keypoints, hand_rows

# --- Hand geometry: a right hand in millimetres ------------------------------------------------
# Hand frame: x radial (towards the thumb), y distal (towards the fingertips), z palmar (out of the
# palm). x × y = z, so the left hand is this hand with x negated (MIRROR).
MIRROR = np.diag([-1.0, 1.0, 1.0])
MCP = {"index": (27, 92, 0), "middle": (6, 96, 0), "ring": (-14, 90, 0), "little": (-33, 79, 0)}
METACARPAL_BASE = {"index": (15, 24, 0), "middle": (4, 24, 0), "ring": (-8, 22, 0), "little": (-19, 20, 0)}
THUMB_CMC = (20, 20, 9)
# Thumb: metacarpal, proximal, distal; fingers: proximal, middle, distal phalanx (distal includes the pad).
PHALANGES = {"thumb": (44, 32, 28), "index": (40, 24, 21), "middle": (44, 28, 23), "ring": (41, 27, 22),
             "little": (33, 19, 20)}
# Radius at the chain's base, two middle joints and tip: fingers taper towards the tip.
RADII = {"thumb": (13, 11, 10, 9), "index": (11.5, 9.3, 8.4, 7.6), "middle": (11.8, 9.5, 8.6, 7.8),
         "ring": (11, 9, 8.1, 7.4), "little": (10, 8, 7.3, 6.6)}
# At rest the thumb lies radial-distal in the palm plane, tipped a little palmar; it bends towards
# the ulnar-palmar side (the palm), which opposition turns towards the fingers.
THUMB_REST = np.array([0.62, 0.75, 0.22])
THUMB_BEND = np.array([-0.75, 0.0, 0.66])

# --- Pose: joint angles in degrees with anatomical limits ---------------------------------------
FINGER_JOINTS = (("mcp_flexion", 0, 90), ("mcp_abduction", -20, 20), ("pip_flexion", 0, 110),
                 ("dip_flexion", 0, 80))  # abduction > 0 is towards the thumb
POSE_PARAMETERS = (("thumb_cmc_abduction", 0, 70), ("thumb_cmc_flexion", -15, 50),
                   ("thumb_mcp_flexion", 0, 60), ("thumb_ip_flexion", -10, 80),
                   *((f"{f}_{j}", lo, hi) for f in FINGERS[1:] for j, lo, hi in FINGER_JOINTS))
POSE_LIMITS = np.array([(lo, hi) for _, lo, hi in POSE_PARAMETERS], float)
# Finger states (mcp flexion, pip, dip) and thumb states (cmc abduction, cmc flexion, mcp, ip).
_FINGER = {"straight": (4, 4, 2), "relaxed": (22, 32, 16), "half": (40, 55, 35), "claw": (15, 75, 55),
           "curled": (85, 100, 62)}
_SPREAD = (10, 0, -8, -15)  # abduction of straight fingers, index -> little
_THUMB = {"out": (10, -15, 5, 5), "relaxed": (18, 0, 15, 15), "across": (5, 15, 45, 65),
          "up": (5, 5, 0, 0), "pinch": (5, 15, 15, 55)}
GESTURES = {
    "open": ("out", "straight", "straight", "straight", "straight"),
    "relaxed": ("relaxed", "relaxed", "relaxed", "relaxed", "relaxed"),
    "fist": ("across", "curled", "curled", "curled", "curled"),
    "point": ("across", "straight", "curled", "curled", "curled"),
    "peace": ("across", "straight", "straight", "curled", "curled"),
    "three": ("across", "straight", "straight", "straight", "curled"),
    "four": ("across", "straight", "straight", "straight", "straight"),
    "thumbs_up": ("up", "curled", "curled", "curled", "curled"),
    "ok": ("pinch", "half", "straight", "straight", "straight"),
    "pinch": ("pinch", "half", "relaxed", "relaxed", "relaxed"),
    "rock": ("relaxed", "straight", "curled", "curled", "straight"),
    "call": ("out", "curled", "curled", "curled", "straight"),
    "claw": ("relaxed", "claw", "claw", "claw", "claw"),
}


def gesture_pose(name: str) -> np.ndarray:
    """The 20 joint angles (degrees, POSE_PARAMETERS order) of a named gesture."""
    thumb, *fingers = GESTURES[name]
    angles = list(_THUMB[thumb])
    for state, spread in zip(fingers, _SPREAD):
        mcp, pip, dip = _FINGER[state]
        angles += [mcp, spread * (1 - mcp / 90), pip, dip]  # curled fingers close up
    return np.array(angles, float)


def sample_pose(rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """A named gesture with natural variation, clipped to the joint limits."""
    name = str(rng.choice(list(GESTURES)))
    return name, np.clip(gesture_pose(name) + rng.normal(0, 7, len(POSE_PARAMETERS)), *POSE_LIMITS.T)


def _rotation(axis, degrees: float) -> np.ndarray:
    """Rotation matrix about `axis` (right-hand rule)."""
    x, y, z = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.radians(degrees)
    c, s, C = np.cos(a), np.sin(a), 1 - np.cos(a)
    return np.array([[c + x * x * C, x * y * C - z * s, x * z * C + y * s],
                     [y * x * C + z * s, c + y * y * C, y * z * C - x * s],
                     [z * x * C - y * s, z * y * C + x * s, c + z * z * C]])


def _unit(v) -> np.ndarray:
    """v scaled to unit length (row-wise for a stack of vectors)."""
    v = np.asarray(v, float)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@dataclass(frozen=True)
class HandShape:
    """One person's hand: overall size, finger proportions, girth."""

    scale: float = 1.0
    proportions: tuple[float, ...] = (1.0,) * 5
    girth: float = 1.0

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "HandShape":
        return cls(float(rng.uniform(0.85, 1.12)), tuple(rng.uniform(0.95, 1.05, 5).round(3)),
                   float(rng.uniform(0.92, 1.1)))


class Chain(NamedTuple):
    """A finger's four points base -> tip and, per segment, its direction and palmar side."""

    points: np.ndarray   # (4, 3)
    directions: np.ndarray  # (3, 3)
    palmar: np.ndarray   # (3, 3)


def _bend(base, direction, palmar, lengths, flexions) -> Chain:
    """A hinged chain: each joint turns the segment towards its palmar side by its flexion."""
    axis = np.cross(direction, palmar)
    points, dirs, palms = [np.asarray(base, float)], [], []
    d, n = direction, palmar
    for length, flexion in zip(lengths, flexions):
        R = _rotation(axis, flexion)
        d, n = R @ d, R @ n
        points.append(points[-1] + length * d)
        dirs.append(d), palms.append(n)
    return Chain(np.array(points), np.array(dirs), np.array(palms))


def _thumb_metacarpal(pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Direction and palmar side of the thumb metacarpal: abduction lifts it out of the palm plane,
    flexion swings it across the palm, and both pronate it so its pad faces the fingers (opposition)."""
    abduction, flexion = pose[0], pose[1]
    z = np.array([0.0, 0, 1])
    d, n = _unit(THUMB_REST), _unit(THUMB_BEND - THUMB_BEND @ _unit(THUMB_REST) * _unit(THUMB_REST))
    lift = _rotation(np.cross(d, z), abduction)
    d, n = lift @ d, lift @ n
    swing = _rotation(z, flexion)
    d, n = swing @ d, swing @ n
    n = _rotation(d, -(0.5 * abduction + 0.4 * flexion)) @ n
    return d, n


def articulate(pose: np.ndarray, shape: HandShape = HandShape()) -> tuple[np.ndarray, dict[str, Chain]]:
    """The 21 joints (MediaPipe order, right-hand frame, mm) and each finger's chain for a pose."""
    joints = np.zeros((JOINTS_PER_HAND, 3))
    chains = {}
    d, n = _thumb_metacarpal(pose)
    lengths = np.array(PHALANGES["thumb"]) * shape.scale * shape.proportions[0]
    chains["thumb"] = _bend(np.array(THUMB_CMC) * shape.scale, d, n, lengths, (0, pose[2], pose[3]))
    for i, f in enumerate(FINGERS[1:]):
        mcp_flexion, abduction, pip, dip = pose[4 + 4 * i: 8 + 4 * i]
        mcp, base = np.array(MCP[f]) * shape.scale, np.array(METACARPAL_BASE[f]) * shape.scale
        d = _rotation((0, 0, -1), abduction) @ _unit(mcp - base)
        lengths = np.array(PHALANGES[f]) * shape.scale * shape.proportions[i + 1]
        chains[f] = _bend(mcp, d, np.array([0.0, 0, 1]), lengths, (mcp_flexion, pip, dip))
    for i, f in enumerate(FINGERS):
        joints[1 + 4 * i: 5 + 4 * i] = chains[f].points
    return joints, chains


# --- Primitives: round cones (tapered capsules) and ellipsoids -----------------------------------
SKIN, NAIL, SLEEVE = 0, 1, 2


class Cone(NamedTuple):
    """The convex hull of two spheres (a tapered capsule), mapped by x -> linear @ x + offset."""

    a: np.ndarray
    b: np.ndarray
    ra: float
    rb: float
    material: int = SKIN
    linear: np.ndarray = np.eye(3)
    offset: np.ndarray = np.zeros(3)


class Ellipsoid(NamedTuple):
    """centre + axes @ u for unit vectors u; the columns of `axes` are the semi-axes."""

    center: np.ndarray
    axes: np.ndarray
    material: int = SKIN


def _ellipsoid_along(p, q, width: float, thickness: float, up, material: int = SKIN) -> Ellipsoid:
    """An ellipsoid spanning p -> q, `thickness` along `up` (semi-axes)."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    e1 = _unit(q - p)
    e3 = _unit(up - (up @ e1) * e1)
    e2 = np.cross(e3, e1)
    return Ellipsoid((p + q) / 2, np.stack([e1 * np.linalg.norm(q - p) / 2, e2 * width, e3 * thickness], 1),
                     material)


def hand_primitives(chains: dict[str, Chain], shape: HandShape) -> list:
    """Skin and nails of a hand in its own frame: tapered phalanges, metacarpals, a palm with thickness."""
    s, g = shape.scale, shape.scale * shape.girth
    z = np.array([0.0, 0, 1])
    prims = []
    for f in FINGERS:
        c, r = chains[f], np.array(RADII[f]) * g
        tip = c.points[3] - r[3] * c.directions[2]  # the rendered pad ends at the tip joint
        prims += [Cone(c.points[0], c.points[1], r[0], r[1]), Cone(c.points[1], c.points[2], r[1], r[2]),
                  Cone(c.points[2], tip, r[2], r[3])]
        nail_base = c.points[2] + 0.35 * (c.points[3] - c.points[2])
        dorsal = -c.palmar[2] * r[3] * 0.9
        prims.append(_ellipsoid_along(nail_base + dorsal, c.points[3] - 1.2 * r[3] * c.directions[2] + dorsal,
                                      0.75 * r[3], 0.3 * r[3], -c.palmar[2], NAIL))
    for f in FINGERS[1:]:
        prims.append(Cone(np.array(METACARPAL_BASE[f]) * s, chains[f].points[0], 9 * g, RADII[f][0] * g))
    thumb = chains["thumb"].points
    heel, slab = np.diag([1, 1, 0.62 * shape.girth]), np.diag([1, 1, 0.38 * shape.girth])
    prims += [
        # the heel of the hand is thick, the palm slab thins towards the knuckles
        Cone(np.array([0, -5, 0]) * s, np.array([0, 25, 0]) * s, 28 * s, 28 * s, linear=heel),
        Cone(np.array([0, 25, 0]) * s, np.array([-3, 62, 0]) * s, 33 * s, 37 * s, linear=slab),
        Ellipsoid(np.array([-25, 42, 3]) * s, np.diag([12, 30, 11.5]) * np.array([s, s, g])),  # hypothenar
        _ellipsoid_along(thumb[0] - 0.1 * (thumb[1] - thumb[0]), thumb[0] + 0.8 * (thumb[1] - thumb[0]),
                         14 * g, 12 * g, z),  # thenar
        _ellipsoid_along(thumb[0] + 0.75 * (thumb[1] - thumb[0]), np.array([14, 58, 2]) * s,
                         9 * g, 4.5 * g, z),  # first web space
    ]
    return prims


def forearm_primitives(shape: HandShape, sleeve: bool) -> list:
    """The wrist and forearm, flattened palm-to-back, optionally in a sleeve; they start inside the
    palm and stay put when the wrist bends."""
    s, g = shape.scale, shape.scale * shape.girth
    flat = np.diag([1, 1, 0.68])
    prims = [Cone(np.array([0, -10, 0]) * s, np.array([0, -260, 0]) * s, 26 * g, 31 * g, linear=flat)]
    if sleeve:
        prims.append(Cone(np.array([0, -70, 0]) * s, np.array([0, -300, 0]) * s, 36 * g, 40 * g, SLEEVE, flat))
    return prims


def _transform(prim, A: np.ndarray, t: np.ndarray):
    """A primitive under x -> A x + t (A may be a rotation times MIRROR)."""
    if isinstance(prim, Cone):
        return prim._replace(linear=A @ prim.linear, offset=A @ prim.offset + t)
    return prim._replace(center=A @ prim.center + t, axes=A @ prim.axes)


# --- Ray casting -------------------------------------------------------------------------------
@dataclass
class Camera:
    """Pinhole camera: x_cam = R x_world + t; pixel (u, v) = f x/z + c (pixel i spans [i, i+1))."""

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    size: int

    def to_camera(self, X: np.ndarray) -> np.ndarray:
        return X @ self.R.T + self.t

    def project(self, X: np.ndarray) -> np.ndarray:
        """(N, 3) world points -> (N, 2) pixels."""
        Xc = self.to_camera(X)
        return Xc[:, :2] / Xc[:, 2:] * np.diag(self.K)[:2] + self.K[:2, 2]

    def rays(self, supersample: int) -> np.ndarray:
        """Unit ray directions through the centres of a supersampled pixel grid, (H, W, 3)."""
        q = (np.arange(self.size * supersample) + 0.5) / supersample
        x = (q - self.K[0, 2]) / self.K[0, 0]
        y = (q - self.K[1, 2]) / self.K[1, 1]
        d = np.stack(np.broadcast_arrays(x[None, :], y[:, None], np.ones(1)), -1)
        return (d / np.linalg.norm(d, axis=-1, keepdims=True)).astype(np.float32)

    def metadata(self) -> dict:
        return {"K": self.K.round(4).tolist(), "R": self.R.round(6).tolist(), "t": self.t.round(4).tolist()}


def _look_at(position, target, up, roll: float, K: np.ndarray, size: int) -> Camera:
    """A camera at `position` aiming at `target`, `up` pointing up the image before rolling by `roll`°."""
    forward = _unit(np.asarray(target) - position)
    right = _unit(np.cross(forward, up))
    spin = _rotation(forward, roll)
    R = np.stack([spin @ right, spin @ np.cross(forward, right), forward])  # rows: camera x, y (down), z
    return Camera(K, R, -R @ position, size)


def _cone_hits(D: np.ndarray, c: Cone) -> tuple[np.ndarray, np.ndarray]:
    """Distance along unit rays from the origin to a round cone (inf = miss) and the normals
    (Inigo Quilez's round-cone intersector, run in the cone's own frame)."""
    inv = np.linalg.inv(c.linear)
    o, D_local = inv @ -c.offset, D @ inv.T
    stretch = np.linalg.norm(D_local, axis=1)
    D_local = D_local / stretch[:, None]
    ba, oa, ob = c.b - c.a, o - c.a, o - c.b
    rr = c.ra - c.rb
    m0, m1, m5, m7 = ba @ ba, ba @ oa, oa @ oa, ob @ ob
    m2, m3, m6 = D_local @ ba, D_local @ oa, D_local @ ob
    d2 = m0 - rr * rr
    k2 = d2 - m2 * m2
    k1 = d2 * m3 - m1 * m2 + m2 * rr * c.ra
    k0 = d2 * m5 - m1 * m1 + 2 * m1 * rr * c.ra - m0 * c.ra ** 2
    h = k1 * k1 - k0 * k2
    with np.errstate(invalid="ignore", divide="ignore"):
        t_body = (-np.sqrt(h) - k1) / k2
        y = m1 - c.ra * rr + t_body * m2
        body = (h >= 0) & (y > 0) & (y < d2)
        h1, h2 = m3 * m3 - m5 + c.ra ** 2, m6 * m6 - m7 + c.rb ** 2
        t1 = np.where(h1 > 0, -m3 - np.sqrt(h1), np.inf)
        t2 = np.where(h2 > 0, -m6 - np.sqrt(h2), np.inf)
    t = np.where(h < 0, np.inf, np.where(body, t_body, np.minimum(t1, t2)))
    P = o + np.where(np.isfinite(t), t, 0)[:, None] * D_local
    n_body = d2 * (P - c.a) - ba * y[:, None]
    n_cap = np.where((t1 <= t2)[:, None], P - c.a, P - c.b)
    n = np.where(body[:, None], n_body, n_cap) @ inv  # normals map by the inverse transpose
    with np.errstate(invalid="ignore", divide="ignore"):
        n = n / np.linalg.norm(n, axis=1, keepdims=True)
    return t / stretch, n


def _ellipsoid_hits(D: np.ndarray, e: Ellipsoid) -> tuple[np.ndarray, np.ndarray]:
    """Distance along unit rays from the origin to an ellipsoid (inf = miss) and the normals."""
    inv = np.linalg.inv(e.axes)
    o, d = inv @ -e.center, D @ inv.T  # the ray in the frame where the ellipsoid is a unit sphere
    a, b, c = np.einsum("ij,ij->i", d, d), 2 * d @ o, o @ o - 1
    disc = b * b - 4 * a * c
    with np.errstate(invalid="ignore"):
        t = np.where(disc >= 0, (-b - np.sqrt(disc)) / (2 * a), np.inf)
        n = (o + np.where(np.isfinite(t), t, 0)[:, None] * d) @ inv
        n = n / np.linalg.norm(n, axis=1, keepdims=True)
    return t, n


def _cone_distance(P: np.ndarray, c: Cone) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance (in the cone's own frame) from points to a round cone, and its gradient.
    The nearest of the spheres swept along the axis sits where the offset meets the axis at the
    cone's half-angle."""
    inv = np.linalg.inv(c.linear)
    Q = (P - c.offset) @ inv.T - c.a
    ba = c.b - c.a
    length = np.linalg.norm(ba)
    y = Q @ ba / length
    x = np.linalg.norm(Q - y[:, None] * ba / length, axis=1)
    sin = (c.ra - c.rb) / length
    s = np.clip((y - x * sin / np.sqrt(1 - sin * sin)) / length, 0, 1)
    V = Q - s[:, None] * ba
    dist = np.linalg.norm(V, axis=1)
    return dist - (c.ra + s * (c.rb - c.ra)), (V / np.maximum(dist, 1e-9)[:, None]) @ inv


def _ellipsoid_distance(P: np.ndarray, e: Ellipsoid) -> tuple[np.ndarray, np.ndarray]:
    """Approximate signed distance from points to an ellipsoid (Quilez's bound) and its gradient."""
    inv = np.linalg.inv(e.axes)
    q = (P - e.center) @ inv.T  # the unit-sphere frame
    radii = np.linalg.norm(e.axes, axis=0)
    k0, k1 = np.linalg.norm(q, axis=1), np.linalg.norm(q / radii, axis=1)
    return k0 * (k0 - 1) / np.maximum(k1, 1e-9), q @ inv


def _extent(prim, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned 3D bounds of a primitive, grown by `margin`."""
    if isinstance(prim, Cone):
        lo = np.minimum(prim.a - prim.ra, prim.b - prim.rb)
        hi = np.maximum(prim.a + prim.ra, prim.b + prim.rb)
        corners = np.stack(np.meshgrid(*zip(lo, hi), indexing="ij"), -1).reshape(-1, 3) @ prim.linear.T
        return corners.min(0) + prim.offset - margin, corners.max(0) + prim.offset + margin
    half = np.linalg.norm(prim.axes, axis=1) + margin
    return prim.center - half, prim.center + half


class Canvas:
    """A supersampled z-buffer of distance, normal, hand id and material."""

    def __init__(self, camera: Camera, supersample: int):
        self.camera, self.ss = camera, supersample
        self.rays = camera.rays(supersample)
        n = self.rays.shape[0]
        self.depth = np.full((n, n), np.inf, np.float32)
        self.normal = np.zeros((n, n, 3), np.float32)
        self.hand = np.full((n, n), -1, np.int8)
        self.material = np.zeros((n, n), np.int8)
        self.drawn: list[tuple[object, int]] = []

    def _window(self, prim, margin: float = 0.0) -> tuple[slice, slice] | None:
        """Pixels the primitive may cover: the projection of its 3D bounding box."""
        lo, hi = _extent(prim, margin)
        corners = np.stack(np.meshgrid(*zip(lo, hi), indexing="ij"), -1).reshape(-1, 3)
        if corners[:, 2].min() <= 1:
            return None
        uv = corners[:, :2] / corners[:, 2:] * np.diag(self.camera.K)[:2] + self.camera.K[:2, 2]
        n = self.depth.shape[0]
        (c0, r0), (c1, r1) = np.floor(uv.min(0) * self.ss).astype(int), np.ceil(uv.max(0) * self.ss).astype(int)
        c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1 + 1, n), min(r1 + 1, n)
        return (slice(r0, r1), slice(c0, c1)) if r1 > r0 and c1 > c0 else None

    def draw(self, prim, hand: int) -> None:
        window = self._window(prim)
        if window is None:
            return
        self.drawn.append((prim, hand))
        D = self.rays[window]
        hits = _cone_hits if isinstance(prim, Cone) else _ellipsoid_hits
        t, n = hits(D.reshape(-1, 3).astype(np.float64), prim)
        t, n = t.reshape(D.shape[:2]), n.reshape(D.shape)
        closer = t < self.depth[window]  # z-buffer: rays from one centre, so distance orders like depth
        self.depth[window][closer] = t[closer]
        self.normal[window][closer] = n[closer]
        self.hand[window][closer] = hand
        self.material[window][closer] = prim.material

    def smooth_normals(self, blend: float) -> None:
        """Replace each normal by the gradient of an exponential smooth union of the hand's primitives
        (weights exp(-distance / blend)), so joins between phalanges, palm and wrist shade without creases."""
        hit = np.isfinite(self.depth)
        order = np.full(self.depth.shape, -1)
        order[hit] = np.arange(hit.sum())  # each hit pixel's row in the flat arrays below
        points = self.rays[hit] * self.depth[hit][:, None]
        hands = self.hand[hit]
        total = np.zeros_like(points)
        for prim, hand in self.drawn:
            window = self._window(prim, 3 * blend)
            if window is None:
                continue
            near = order[window][order[window] >= 0]
            near = near[hands[near] == hand]
            dist, grad = (_cone_distance if isinstance(prim, Cone) else _ellipsoid_distance)(points[near], prim)
            weight = np.exp(-np.maximum(dist, 0) / blend) / np.maximum(np.linalg.norm(grad, axis=1), 1e-9)
            total[near] += weight[:, None] * grad
        norm = np.linalg.norm(total, axis=1, keepdims=True)
        self.normal[hit] = np.where(norm > 1e-6, total / np.maximum(norm, 1e-6), self.normal[hit])


# --- Appearance --------------------------------------------------------------------------------
# sRGB skin tones from very light to very dark (roughly the Fitzpatrick / Monk scales).
SKIN_TONES = np.array([(246, 220, 200), (238, 200, 172), (228, 180, 148), (210, 158, 122), (190, 136, 100),
                       (160, 110, 78), (128, 86, 60), (96, 64, 46)], float) / 255
NAIL_COLOR = np.array([0.96, 0.86, 0.84])
BACKGROUNDS = ("gradient", "noise", "stripes", "checker", "clutter")


@dataclass(frozen=True)
class Look:
    """Everything about a sequence's appearance that stays fixed across frames and cameras."""

    skin: np.ndarray        # sRGB in [0, 1]
    sleeve: np.ndarray | None
    light: np.ndarray       # unit vector towards the key light, camera frame: each camera of the rig lights its side
    light_color: np.ndarray
    ambient: float
    wrap: float             # light wrapping round the terminator: skin scatters
    specular: float
    background: str
    blotches: np.ndarray    # (8, 4): wave vectors (1/mm) and phases of the skin's albedo variation

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "Look":
        tone = int(rng.integers(len(SKIN_TONES)))
        skin = np.clip(SKIN_TONES[tone] * rng.uniform(0.94, 1.06) + rng.normal(0, 0.015, 3), 0, 1)
        sleeve = rng.uniform(0.05, 0.9, 3) if rng.random() < 0.4 else None
        warmth = rng.uniform(-0.08, 0.08)
        light = _unit([rng.normal(0, 0.6), -0.2 - abs(rng.normal(0, 0.6)), -1])  # from the front, above
        return cls(skin, sleeve, light, rng.uniform(0.7, 0.95) * np.array([1 + warmth, 1, 1 - warmth]),
                   float(rng.uniform(0.3, 0.45)), float(rng.uniform(0.5, 1.0)), float(rng.uniform(0.04, 0.14)),
                   str(rng.choice(BACKGROUNDS)),
                   np.column_stack([_unit(rng.normal(0, 1, (8, 3))) * 2 * np.pi / rng.uniform(8, 30, (8, 1)),
                                    rng.uniform(0, 2 * np.pi, 8)]))


def _random_color(rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
    """A background colour not too close to the skin, so the silhouette stays legible."""
    for _ in range(20):
        hsv = np.array([[[rng.uniform(0, 180), rng.uniform(0, 200), rng.uniform(30, 245)]]], np.float32)
        rgb = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0] / 255
        if np.abs(rgb - avoid).sum() > 0.35:
            break
    return rgb


def _value_noise(rng: np.random.Generator, size: int, octaves: int = 4) -> np.ndarray:
    """Smooth multi-octave noise in [0, 1]."""
    out = np.zeros((size, size), np.float32)
    for o in range(octaves):
        cells = 2 ** (o + 2)
        out += cv2.resize(rng.random((cells, cells), dtype=np.float32), (size, size),
                          interpolation=cv2.INTER_CUBIC) / 2 ** o
    return (out - out.min()) / max(float(np.ptp(out)), 1e-6)


def background(kind: str, size: int, skin: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An (S, S, 3) float image in [0, 1]: gradients, noise, stripes, checkers or blurred clutter."""
    c1, c2 = _random_color(rng, skin), _random_color(rng, skin)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, np.pi)
    along = np.cos(angle) * xx + np.sin(angle) * yy
    if kind == "gradient":
        w = (along - along.min()) / np.ptp(along)
    elif kind == "noise":
        w = _value_noise(rng, size)
    elif kind == "stripes":
        w = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 12) * along + 2 * _value_noise(rng, size))
    elif kind == "checker":
        across = -np.sin(angle) * xx + np.cos(angle) * yy
        n = rng.uniform(3, 10)
        w = ((np.floor(along * n) + np.floor(across * n)) % 2).astype(np.float32)
    else:  # clutter: out-of-focus objects
        img = np.ones((size, size, 3), np.float32) * c1
        for _ in range(int(rng.integers(6, 14))):
            color = _random_color(rng, skin)
            x0, y0 = rng.integers(0, size, 2)
            w_, h_ = rng.integers(size // 10, size // 2, 2)
            if rng.random() < 0.5:
                cv2.rectangle(img, (int(x0), int(y0)), (int(x0 + w_), int(y0 + h_)), color.tolist(), -1)
            else:
                cv2.circle(img, (int(x0), int(y0)), int(w_ // 2), color.tolist(), -1)
        return cv2.GaussianBlur(img, (0, 0), size / 60)
    img = c1 * (1 - w[..., None]) + c2 * w[..., None]
    img *= (0.85 + 0.3 * _value_noise(rng, size, 3))[..., None]  # uneven illumination
    return cv2.GaussianBlur(img.astype(np.float32), (0, 0), size / 256)


# The main palm creases (distal, proximal, thenar) as polylines in the right-hand frame at unit scale.
PALM_CREASES = (((-40, 74), (-20, 76), (0, 80), (14, 87)), ((30, 64), (10, 60), (-10, 56), (-28, 50)),
                ((30, 64), (19, 52), (13, 36), (11, 16)))


def _palm_crease(local: np.ndarray) -> np.ndarray:
    """How much each point (right-hand frame, unit scale) lies in a palm crease, in [0, 1]."""
    out = np.zeros(len(local), np.float32)
    on_palm = np.flatnonzero((local[:, 2] > 0) & (local[:, 2] < 20) & (local[:, 1] > 5) & (local[:, 1] < 95))
    xy = local[on_palm, :2]
    dist2 = np.full(len(xy), np.inf)
    for line in PALM_CREASES:
        for a, b in zip(np.array(line[:-1], float), np.array(line[1:], float)):
            u = np.clip((xy - a) @ (b - a) / ((b - a) @ (b - a)), 0, 1)
            dist2 = np.minimum(dist2, ((xy - a - u[:, None] * (b - a)) ** 2).sum(1))
    out[on_palm] = np.exp(-0.5 * dist2 / 1.3 ** 2)
    return out


def shade(canvas: Canvas, look: Look, placements: list[tuple[np.ndarray, np.ndarray] | None]) -> np.ndarray:
    """Soft skin shading of the z-buffer in camera frame: wrapped Lambert + sky ambient + a little gloss,
    palms lighter than backs and creased, blotchy skin, darker hollows where a surface sits behind its
    neighbours. `placements` maps each hand's frame (unit scale) to the world, None if absent."""
    hit = np.isfinite(canvas.depth)
    depth = np.where(hit, canvas.depth, canvas.depth[hit].max() + 40 if hit.any() else 0)
    hollow = np.clip((depth - cv2.GaussianBlur(depth, (0, 0), 0.02 * depth.shape[0])) / 40, 0, 1)[hit]
    N, hand, material = canvas.normal[hit], canvas.hand[hit], canvas.material[hit]  # (P, 3), (P,), (P,)
    camera = canvas.camera
    L = look.light.astype(np.float32)
    diffuse = np.clip((N @ L + look.wrap) / (1 + look.wrap), 0, 1)
    sky = look.ambient * (0.75 - 0.25 * N[:, 1])
    gloss = look.specular * np.clip(N @ _unit(L + np.array([0, 0, -1.0])).astype(np.float32), 0, 1) ** 24
    palm_skin = look.skin + (1 - look.skin) * (0.18 + 0.25 * (1 - look.skin.mean())) * np.array([1, 0.85, 0.8])
    albedo = np.tile(look.skin.astype(np.float32), (len(N), 1))
    for h, placement in enumerate(placements):
        sel = np.flatnonzero((hand == h) & (material == SKIN))
        if placement is None or not len(sel):
            continue
        linear, position = placement
        world = (canvas.rays[hit][sel] * depth[hit][sel, None] - camera.t) @ camera.R
        local = (world - position) @ np.linalg.inv(linear).T
        palmar = np.clip(N[sel] @ camera.R @ linear[:, 2] / np.linalg.norm(linear[:, 2]), 0, 1) ** 0.7
        blotch = 1 + 0.07 * np.sin(local @ look.blotches[:, :3].T + look.blotches[:, 3]).mean(1)
        tint = look.skin * (1 - palmar[:, None]) + palm_skin * palmar[:, None]
        albedo[sel] = tint * (blotch * (1 - 0.22 * palmar * _palm_crease(local)))[:, None]
    albedo[material == NAIL] = 0.5 * albedo[material == NAIL] + 0.5 * NAIL_COLOR
    if look.sleeve is not None:
        albedo[material == SLEEVE] = look.sleeve
    light = look.light_color * (diffuse * (1 - 0.4 * hollow))[:, None] + sky[:, None]
    color = np.zeros(canvas.normal.shape, np.float32)
    color[hit] = np.clip(albedo * light + gloss[:, None] * look.light_color, 0, 1)
    return color


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
        forearm = self.rotation @ _rotation((0, 1, 0), pronation)
        hand = forearm @ _rotation((1, 0, 0), flexion) @ _rotation((0, 0, 1), deviation)
        mirror = MIRROR if self.hand == "left" else np.eye(3)
        return hand @ mirror, forearm @ mirror


def _arrangement(rng, scale: float, two_hands: bool) -> tuple[str, list[tuple[str, np.ndarray, np.ndarray]]]:
    """Where the hands are: palms face +z in the world, fingers +y. Seen from the palm side a right
    hand sits to the right of a left one (thumbs outwards)."""
    if not two_hands:
        hand = "right" if rng.random() < 0.5 else "left"
        return "single", [(hand, _rotation((0, 0, 1), rng.normal(0, 10)), np.zeros(3))]
    kind = str(rng.choice(["side_by_side", "overlapping", "fingertips"], p=[0.5, 0.25, 0.25]))
    if kind == "fingertips":  # fingers pointing at each other, tips nearly touching
        gap, tilt = rng.uniform(370, 410) * scale, rng.normal(0, 10)
        return kind, [("right", _rotation((0, 0, 1), 90 + tilt), np.array([gap / 2, 0, 0])),
                      ("left", _rotation((0, 0, 1), -90 + tilt), np.array([-gap / 2, 0, 0]))]
    # little fingers face each other; "overlapping" puts one hand partly in front of the other
    gap = rng.uniform(120, 170) * scale if kind == "side_by_side" else rng.uniform(85, 110) * scale
    depth = 0.0 if kind == "side_by_side" else rng.choice([-1, 1]) * rng.uniform(40, 60) * scale
    lean = rng.uniform(-15, 8)  # > 0: fingertips lean towards each other
    return kind, [("right", _rotation((0, 0, 1), lean), np.array([gap / 2, rng.normal(0, 10), depth / 2])),
                  ("left", _rotation((0, 0, 1), -lean), np.array([-gap / 2, rng.normal(0, 10), -depth / 2]))]


def _place_cameras(rng, n_cameras: int, joints: np.ndarray, size: int, two_hands: bool) -> list[tuple[Camera, str]]:
    """Cameras around the palm (+z) or back (-z) side, tilted at most ~45°, each framing every frame's
    joints so the hands fill 40-70 % of the image (two hands: their union 60-85 %)."""
    target = joints.reshape(-1, 3).mean(0)
    cameras = []
    for _ in range(n_cameras):
        side = "palm" if rng.random() < 0.5 else "back"
        tilt, azimuth = min(abs(rng.normal(0, 22)), 45), rng.uniform(0, 360)
        axis = _rotation((0, 0, 1), azimuth) @ np.array([1.0, 0, 0])
        direction = _rotation(axis, tilt) @ np.array([0, 0, 1.0 if side == "palm" else -1.0])
        position = target + direction * rng.uniform(350, 700)
        camera = _look_at(position, target, (0, 1, 0), float(np.clip(rng.normal(0, 25), -60, 60)), np.eye(3), size)
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
        canvas.draw(_transform(prim, camera.R, camera.t), hand)
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
    prims = [_transform(p, hand_map, track.position) for p in hand_primitives(chains, shape)]
    prims += [_transform(p, forearm_map, track.position) for p in forearm_primitives(shape, look.sleeve is not None)]
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


# --- Inspection --------------------------------------------------------------------------------
GRID_COLORS = ((0, 220, 0), (230, 30, 30), (40, 90, 255), (240, 200, 0))  # RGB: ground truth first


def sample_grid(frames: list[SyntheticFrame], path: str | Path,
                keypoint_sets: dict[str, list[np.ndarray]] | None = None, columns: int = 6) -> None:
    """A PNG grid of the frames with ground truth (green) and each extra keypoint set drawn over them."""
    from handloom.io import encode_png, write_bytes
    from handloom.report.render import draw_keypoints

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
