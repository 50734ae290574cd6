"""Reference-to-target hand generation from a trained checkpoint: the Python API behind `handloom generate`.

Conventions, the training data's own: the model sees square crops, so every image (and every keypoint
frame) is centre-cropped to its largest centred square, then resized to the checkpoint's resolution.
Keypoints are the unified 42x3 layout (schema.py) in pixels of the frame they were taken in. The
reference's keypoints come from MediaPipe on that square unless the caller gives them. Masks the
caller does not give are drawn around the skeleton (annotate.masks.skeleton_mask, dilated): the
target's true mask is unknown before it is generated.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from handloom import schema
from handloom.annotate.keypoints import detect_all, make_detector
from handloom.annotate.masks import dilate, skeleton_mask
from handloom.errors import UserError
from handloom.io import ImageError, encode_png, read_image_file, write_bytes
from handloom.model.vae import load_autoencoder
from handloom.params import MAX_IMAGE_SIDE, EvaluateParams, TrainParams
from handloom.shards.conditioning import CHANNELS
from handloom.shards.reader import ExampleSpec, to_example
from handloom.train.module import HandDiffusionModule, to_uint8_image

MODES = ("pose", "view")  # schema.FLAG: pose 0, view 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Sampling defaults are the evaluate stage's, so a generated hand is one of the kind the report scores.
SAMPLING = EvaluateParams()


class GenerateError(UserError, ValueError):
    """A bad input (file, keypoints, checkpoint): the CLI prints it and exits 2, without a traceback."""


class NoHandError(GenerateError):
    pass


@dataclass
class HandGenerator:
    """A trained module ready to sample, and the ExampleSpec its inputs must follow."""

    module: HandDiffusionModule
    spec: ExampleSpec

    @property
    def device(self) -> torch.device:
        return self.module.device


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def conditioning_of(cond_channels: int) -> str:
    """The conditioning mode a checkpoint was trained with: each mode has its own channel count."""
    modes = [mode for mode, channels in CHANNELS.items() if channels == cond_channels]
    if not modes:
        raise GenerateError(f"a checkpoint with {cond_channels} conditioning channels matches no mode {CHANNELS}")
    return modes[0]


def load_generator(checkpoint: str | Path, params: TrainParams | None = None, device: str | None = None
                   ) -> HandGenerator:
    """The checkpoint's module (sampled with its EMA weights) and its input spec.

    The checkpoint fixes the DiT's grid and, by its channel count, the conditioning mode; `params`
    (params.yaml's train section) adds what it does not hold: the heatmap sigma and, for a latent
    model, the VAE's path and the pixel resolution.
    """
    path, params = Path(checkpoint), params or TrainParams()
    if not path.is_file():
        raise GenerateError(f"no checkpoint at {path}: run `dvc repro train` or pass --checkpoint")
    state = read_checkpoint(path)
    autoencoder = load_autoencoder(params.vae_path)
    try:
        module = HandDiffusionModule.from_checkpoint(state, autoencoder)
    except (KeyError, TypeError, ValueError) as e:  # hyper-parameters this handloom cannot build (unknown keys)
        raise GenerateError(f"{path}: its hyper-parameters do not fit this handloom: {one_line(e)}") from None
    except RuntimeError as e:  # weights of another architecture than its hyper-parameters say
        raise GenerateError(f"{path}: its weights do not match its hyper-parameters: {one_line(e)}") from None
    geometry = module.geometry
    resolution = geometry.input_size if autoencoder is None else params.resolution
    expected = ((resolution, 3) if autoencoder is None else
                (autoencoder.geometry.latent_size(resolution), autoencoder.geometry.channels))
    if (geometry.input_size, geometry.image_channels) != expected:
        raise GenerateError(f"{path} holds a {geometry.input_size}px {geometry.image_channels}-channel model, the "
                            f"params give {expected[0]}px {expected[1]}-channel: pass the params.yaml it was trained "
                            f"with")
    spec = ExampleSpec(resolution, conditioning_of(geometry.cond_channels), params.heatmap_sigma,
                       cond_resolution=None if geometry.input_size == resolution else geometry.input_size)
    try:
        module = module.to(device or default_device())
    except (RuntimeError, ValueError) as e:
        raise GenerateError(f"device {device!r}: {e}") from None
    return HandGenerator(module, spec)


def one_line(error: Exception, limit: int = 300) -> str:
    return " ".join(str(error).split())[:limit]


def read_checkpoint(path: Path) -> dict:
    """A Lightning checkpoint's contents, loaded as data (weights_only: a checkpoint never runs code); a file
    that is empty, truncated, not a checkpoint or without the train stage's hyper-parameters is a GenerateError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises EOFError, RuntimeError, UnpicklingError, ... per way of breaking
        raise GenerateError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(state, dict) or not isinstance(state.get("hyper_parameters"), dict):
        raise GenerateError(f"{path}: a checkpoint without the train stage's hyper-parameters")
    return state


# --- Inputs ----------------------------------------------------------------------------------------
def centre_square(width: int, height: int) -> tuple[int, int, int]:
    """(x0, y0, side) of a frame's largest centred square."""
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side


def into_square(keypoints: np.ndarray, width: int, height: int) -> np.ndarray:
    """Keypoints of a width x height frame in the pixels of its centred square; absent rows stay zero."""
    x0, y0, _ = centre_square(width, height)
    k = np.array(keypoints, np.float32)
    present = np.any(k != 0, axis=1)
    k[present, :2] -= np.float32([x0, y0])
    return k


def square_of(image: np.ndarray) -> np.ndarray:
    x0, y0, side = centre_square(image.shape[1], image.shape[0])
    return image[y0:y0 + side, x0:x0 + side]


def read_image(path: str | Path, gray: bool = False) -> np.ndarray:
    """The project's one reader of outside images (io.read_image_file: EXIF orientation applied, 16-bit scaled,
    alpha over black), as RGB or gray."""
    try:
        image = read_image_file(path).pixels
    except ImageError as e:
        raise GenerateError(f"cannot read image {path}: {e}") from None
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if gray else image


def checked_keypoints(keypoints, source: str) -> np.ndarray:
    try:
        k = np.asarray(keypoints, np.float32)
    except (TypeError, ValueError, OverflowError) as e:
        raise GenerateError(f"{source}: keypoints must be numbers: {e}") from None
    if k.shape != (schema.NUM_KEYPOINTS, 3):
        raise GenerateError(f"{source}: keypoints must be {schema.NUM_KEYPOINTS}x3 (schema.py's layout), got {k.shape}")
    if not np.all(np.isfinite(k)) or not np.any(k[:, 2] > 0):
        raise GenerateError(f"{source}: keypoints must be finite with at least one visible joint")
    return k


def read_keypoints(path: str | Path) -> tuple[np.ndarray, tuple[int, int] | None]:
    """(42x3 keypoints, frame (width, height) or None) from a .npy, or a .json holding the 42x3 list or
    {"keypoints": [...], "width": W, "height": H}."""
    path = Path(path)
    if path.suffix.lower() not in (".npy", ".json"):
        raise GenerateError(f"{path}: keypoints must be a .npy or .json file")
    try:
        data = np.load(path, allow_pickle=False) if path.suffix.lower() == ".npy" else json.loads(path.read_text())
    except (ValueError, OSError, EOFError) as e:  # a corrupt .npy, not JSON, not UTF-8, a folder
        raise GenerateError(f"{path}: {e}") from None
    if not isinstance(data, dict):
        return checked_keypoints(data, str(path)), None
    size = frame_size(data, path) if "width" in data or "height" in data else None
    return checked_keypoints(data.get("keypoints"), str(path)), size


def frame_size(data: dict, path: Path) -> tuple[int, int]:
    """(width, height) a keypoint file declares: whole numbers of pixels, at least 1 and at most MAX_IMAGE_SIDE."""
    size = data.get("width"), data.get("height")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_IMAGE_SIDE for v in size):
        raise GenerateError(f"{path}: width and height must be whole numbers in [1, {MAX_IMAGE_SIDE}], got "
                            f"{size[0]!r} x {size[1]!r}")
    return size


def detect_in_square(square: np.ndarray, detector, what: str) -> np.ndarray:
    """MediaPipe's keypoints on a square crop, in its pixels; NoHandError when it finds no hand."""
    with contextlib.nullcontext(detector) if detector is not None else make_detector() as d:
        keypoints = detect_all(square[None], d)[0]
    if not np.any(keypoints[:, 2] > 0):
        raise NoHandError(f"no hand detected in the {what}")
    return keypoints


def read_target(path: str | Path, detector=None) -> tuple[np.ndarray, tuple[int, int] | None]:
    """A target pose file: keypoints (.npy/.json), or an image whose MediaPipe keypoints are used."""
    if Path(path).suffix.lower() not in IMAGE_SUFFIXES:
        return read_keypoints(path)
    square = square_of(read_image(path))
    return detect_in_square(square, detector, f"target image {path}"), (square.shape[1], square.shape[0])


def hand_sample(square: np.ndarray, keypoints: np.ndarray, mask: np.ndarray | None) -> dict:
    """One side of a pair as to_example reads it."""
    if mask is None:
        mask = dilate(skeleton_mask(keypoints, *square.shape[:2]))
    return dict(image=square, keypoints=keypoints, mask=mask)


def resized(image: np.ndarray, size: int | None) -> np.ndarray:
    if size is None or size == image.shape[0]:
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC if size > image.shape[0] else cv2.INTER_AREA)


# --- Generation ------------------------------------------------------------------------------------
def generate(reference: str | Path | np.ndarray, target_keypoints: np.ndarray, mode: str = "pose", *,
             model: HandGenerator, target_size: tuple[int, int] | None = None,
             reference_keypoints: np.ndarray | None = None, reference_mask: np.ndarray | None = None,
             steps: int = SAMPLING.sample_steps, appearance_scale: float = SAMPLING.appearance_scale,
             pose_scale: float = SAMPLING.pose_scale, eta: float = SAMPLING.eta, seed: int = 0,
             size: int | None = None,
             detector=None) -> np.ndarray:
    """The reference's hand in the target pose (mode "pose") or seen from the target's view ("view").

    `reference`: an RGB uint8 image or its path. `target_keypoints` are in a frame of `target_size`
    (width, height), by default the reference image's; `reference_keypoints` and `reference_mask`
    (uint8, 255 = hand) are in the reference image's pixels. Returns (R, R, 3) uint8 RGB at the
    checkpoint's resolution R, or `size` x `size`. Raises NoHandError when the reference needs
    MediaPipe and it finds no hand.
    """
    if mode not in MODES:
        raise GenerateError(f"mode must be one of {MODES}, got {mode!r}")
    if not 1 <= steps <= model.module.diffusion.num_steps:
        raise GenerateError(f"steps must be in [1, {model.module.diffusion.num_steps}] (the model's diffusion "
                            f"steps), got {steps}")
    what = "reference image" + (f" {reference}" if isinstance(reference, (str, Path)) else "")
    image = read_image(reference) if isinstance(reference, (str, Path)) else reference
    h, w = image.shape[:2]
    square = square_of(image)
    if reference_keypoints is None:
        reference_keypoints = detect_in_square(square, detector, what)
    else:
        reference_keypoints = into_square(checked_keypoints(reference_keypoints, what), w, h)
    mask = None if reference_mask is None else square_of(reference_mask)
    tw, th = target_size or (w, h)
    target = into_square(checked_keypoints(target_keypoints, "target"), tw, th)
    # The target's pixels are what we generate: a blank of its frame's size stands in, since sampling
    # reads only the target's conditioning, which to_example renders exactly as in training.
    blank = np.zeros((min(tw, th),) * 2 + (3,), np.uint8)
    example = to_example(hand_sample(square, reference_keypoints, mask), hand_sample(blank, target, None), mode,
                         model.spec, rng=None)
    batch = {k: v[None].to(model.device) for k, v in example.items()}
    generated = model.module.sample(batch, steps, appearance_scale, pose_scale, seed, eta=eta)  # (1, 3, R, R), [-1, 1]
    return resized(to_uint8_image(generated[0]), size)


# --- Files and batches ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    """One generation job: a reference image, a target (keypoint file or image), where to write it."""

    reference: Path
    target: Path
    output: Path
    mode: str = "pose"
    seed: int = 0
    reference_keypoints: Path | None = None

    @property
    def needs_detector(self) -> bool:
        return self.reference_keypoints is None or self.target.suffix.lower() in IMAGE_SUFFIXES


def generate_pair(pair: Pair, model: HandGenerator, detector=None, **options) -> np.ndarray:
    target, target_size = read_target(pair.target, detector)
    reference_keypoints = None if pair.reference_keypoints is None else read_keypoints(pair.reference_keypoints)[0]
    return generate(pair.reference, target, pair.mode, model=model, target_size=target_size,
                    reference_keypoints=reference_keypoints, seed=pair.seed, detector=detector, **options)


def write_png(path: str | Path, image: np.ndarray) -> None:
    write_bytes(path, encode_png(image))


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def folder_pairs(references: Path, target: Path, out_dir: Path, mode: str = "pose", seed: int = 0) -> list[Pair]:
    """Every image in `references` to `target`: one pose for all, or a folder of poses matched by file stem."""
    def target_of(reference: Path) -> Path:
        if not target.is_dir():
            return target
        matches = sorted(p for p in target.glob(f"{reference.stem}.*")
                         if p.suffix.lower() in (*IMAGE_SUFFIXES, ".npy", ".json"))
        if not matches:
            raise GenerateError(f"no target named {reference.stem}.* in {target} for {reference}")
        return matches[0]

    pairs = [Pair(r, target_of(r), out_dir / f"{r.stem}.png", mode, seed) for r in images_in(references)]
    return checked_outputs(pairs, [f"reference {pair.reference.name}" for pair in pairs], out_dir)


def parquet_pairs(path: Path, out_dir: Path, mode: str = "pose", seed: int = 0) -> list[Pair]:
    """Rows of a Parquet list of pairs: `reference` and `target` paths, optionally `mode`, `seed`,
    `reference_keypoints` and `output` (a .png file name inside out_dir). Relative paths are from the list's folder.
    A row that cannot be generated as written is refused by its number before any pair is generated."""
    try:
        table = pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... for a file that is no table
        raise GenerateError(f"{path}: not a Parquet table of pairs ({type(e).__name__}: {e})") from None
    missing = {"reference", "target"} - set(table.columns)
    if missing:
        raise GenerateError(f"{path}: missing column(s) {sorted(missing)}")
    pairs = [pair_of_row(row, i, path, out_dir, mode, seed) for i, row in enumerate(table.to_dict("records"))]
    return checked_outputs(pairs, [f"row {i}" for i in range(len(pairs))], out_dir)


def pair_of_row(row: dict, i: int, path: Path, out_dir: Path, mode: str, seed: int) -> Pair:
    def cell(column: str, default=None):
        value = row.get(column)
        return default if value is None or (np.ndim(value) == 0 and pd.isna(value)) else value

    def file(column: str, required: bool = False) -> Path | None:
        value = cell(column)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value or "\0" in value:
            raise GenerateError(f"{path}: row {i}: {column} must be a file path, got {value!r}")
        return path.parent / value  # an absolute path stays as it is

    reference, row_mode, row_seed = file("reference", True), cell("mode", mode), cell("seed", seed)
    if not isinstance(row_mode, str) or row_mode not in MODES:
        raise GenerateError(f"{path}: row {i}: mode must be one of {MODES}, got {row_mode!r}")
    if isinstance(row_seed, float) and row_seed.is_integer():
        row_seed = int(row_seed)  # pandas stores an integer column with a null as float
    if not isinstance(row_seed, (int, np.integer)) or isinstance(row_seed, bool) or not 0 <= row_seed < 2**63:
        raise GenerateError(f"{path}: row {i}: seed must be a whole number in [0, 2**63), got {row_seed!r}")
    output = cell("output", f"{i:05d}-{reference.stem}-{row_mode}.png")
    if not isinstance(output, str):
        raise GenerateError(f"{path}: row {i}: output must be a file name, got {output!r}")
    return Pair(reference, file("target", True), out_dir / output, row_mode, int(row_seed),
                file("reference_keypoints"))


def checked_outputs(pairs: list[Pair], names: list[str], out_dir: Path) -> list[Pair]:
    """The pairs, once every output is a .png inside out_dir and no two write one file; else a GenerateError naming
    the rows. Two rows writing one file would leave only the last one's image, without a word."""
    top, written = Path(os.path.abspath(out_dir)), {}
    for pair, name in zip(pairs, names):
        output = Path(os.path.abspath(pair.output))
        if top not in output.parents:
            raise GenerateError(f"{name}: output {pair.output} is outside --out {out_dir}")
        if output.suffix.lower() != ".png":
            raise GenerateError(f"{name}: output {output.name!r} must be a .png file (PNG is what is written)")
        same = os.path.normcase(output)
        if same in written:
            raise GenerateError(f"{written[same]} and {name} both write {output.relative_to(top)}")
        written[same] = name
    return pairs


def generate_batch(pairs: list[Pair], model: HandGenerator, **options) -> list[tuple[Pair, str]]:
    """Each pair's image written to its output, with a progress bar; a failed pair is skipped, not fatal.

    Returns the failed pairs and why. One MediaPipe graph serves the whole batch, made only if needed.
    """
    failures = []
    needs_detector = any(p.needs_detector for p in pairs)
    with make_detector() if needs_detector else contextlib.nullcontext() as detector:
        for pair in tqdm(pairs, desc="generate", unit="pair"):
            try:
                write_png(pair.output, generate_pair(pair, model, detector, **options))
            except (GenerateError, OSError) as e:
                failures.append((pair, str(e)))
    return failures
