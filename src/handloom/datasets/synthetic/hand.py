"""A right hand in millimetres: bone geometry, joint angles with anatomical limits, forward kinematics."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from handloom.schema import FINGERS, JOINTS_PER_HAND

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


def rotation(axis, degrees: float) -> np.ndarray:
    """Rotation matrix about `axis` (right-hand rule)."""
    x, y, z = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.radians(degrees)
    c, s, C = np.cos(a), np.sin(a), 1 - np.cos(a)
    return np.array([[c + x * x * C, x * y * C - z * s, x * z * C + y * s],
                     [y * x * C + z * s, c + y * y * C, y * z * C - x * s],
                     [z * x * C - y * s, z * y * C + x * s, c + z * z * C]])


def unit(v) -> np.ndarray:
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
        R = rotation(axis, flexion)
        d, n = R @ d, R @ n
        points.append(points[-1] + length * d)
        dirs.append(d), palms.append(n)
    return Chain(np.array(points), np.array(dirs), np.array(palms))


def _thumb_metacarpal(pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Direction and palmar side of the thumb metacarpal: abduction lifts it out of the palm plane,
    flexion swings it across the palm, and both pronate it so its pad faces the fingers (opposition)."""
    abduction, flexion = pose[0], pose[1]
    z = np.array([0.0, 0, 1])
    d, n = unit(THUMB_REST), unit(THUMB_BEND - THUMB_BEND @ unit(THUMB_REST) * unit(THUMB_REST))
    lift = rotation(np.cross(d, z), abduction)
    d, n = lift @ d, lift @ n
    swing = rotation(z, flexion)
    d, n = swing @ d, swing @ n
    n = rotation(d, -(0.5 * abduction + 0.4 * flexion)) @ n
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
        d = rotation((0, 0, -1), abduction) @ unit(mcp - base)
        lengths = np.array(PHALANGES[f]) * shape.scale * shape.proportions[i + 1]
        chains[f] = _bend(mcp, d, np.array([0.0, 0, 1]), lengths, (mcp_flexion, pip, dip))
    for i, f in enumerate(FINGERS):
        joints[1 + 4 * i: 5 + 4 * i] = chains[f].points
    return joints, chains


