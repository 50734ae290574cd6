"""The hand as round cones (tapered capsules) and ellipsoids, placed along the articulated bones."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from handloom.datasets.synthetic.hand import (
    METACARPAL_BASE,
    RADII,
    Chain,
    HandShape,
    unit,
)
from handloom.schema import FINGERS

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
    e1 = unit(q - p)
    e3 = unit(up - (up @ e1) * e1)
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


def transform(prim, A: np.ndarray, t: np.ndarray):
    """A primitive under x -> A x + t (A may be a rotation times MIRROR)."""
    if isinstance(prim, Cone):
        return prim._replace(linear=A @ prim.linear, offset=A @ prim.offset + t)
    return prim._replace(center=A @ prim.center + t, axes=A @ prim.axes)


