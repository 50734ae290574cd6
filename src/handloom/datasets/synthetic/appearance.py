"""Skin tones, nails, backgrounds and soft shading of the ray-cast canvas."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from handloom.datasets.synthetic.hand import unit
from handloom.datasets.synthetic.primitives import NAIL, SKIN, SLEEVE
from handloom.datasets.synthetic.raycast import Canvas

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
        light = unit([rng.normal(0, 0.6), -0.2 - abs(rng.normal(0, 0.6)), -1])  # from the front, above
        return cls(skin, sleeve, light, rng.uniform(0.7, 0.95) * np.array([1 + warmth, 1, 1 - warmth]),
                   float(rng.uniform(0.3, 0.45)), float(rng.uniform(0.5, 1.0)), float(rng.uniform(0.04, 0.14)),
                   str(rng.choice(BACKGROUNDS)),
                   np.column_stack([unit(rng.normal(0, 1, (8, 3))) * 2 * np.pi / rng.uniform(8, 30, (8, 1)),
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
    gloss = look.specular * np.clip(N @ unit(L + np.array([0, 0, -1.0])).astype(np.float32), 0, 1) ** 24
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


