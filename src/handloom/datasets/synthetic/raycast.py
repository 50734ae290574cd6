"""Pinhole cameras and a numpy ray caster over the primitives: depth, normals, part ids per pixel."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from handloom.datasets.synthetic.hand import rotation, unit
from handloom.datasets.synthetic.primitives import Cone, Ellipsoid


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


def look_at(position, target, up, roll: float, K: np.ndarray, size: int) -> Camera:
    """A camera at `position` aiming at `target`, `up` pointing up the image before rolling by `roll`°."""
    forward = unit(np.asarray(target) - position)
    right = unit(np.cross(forward, up))
    spin = rotation(forward, roll)
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


