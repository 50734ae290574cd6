"""Hand-to-body outpainting ("Giving a Hand to Diffusion Models", Pelykh et al.): a generated hand crop is
placed on a larger canvas and a diffusers inpainting pipeline paints the rest around it, the kept region
growing pass by pass (sequential mask expansion) so that the hand is never repainted."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from handloom.errors import UserError


class PlacementError(UserError, ValueError):
    """The hand does not fit the canvas, or nothing of it is kept."""


class PipelineError(UserError, ValueError):
    """The path holds no inpainting pipeline that loads."""


def load_inpainting(path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """The inpainting pipeline saved (save_pretrained) at a local path; nothing is downloaded.

    Anything else is a PipelineError: diffusers would take a missing folder for a Hub repository name and fail
    with a connection error, or fail deep in a component's loader.
    """
    if not (Path(path) / "model_index.json").is_file():
        raise PipelineError(f"no diffusers pipeline at {path}: expected a folder written by save_pretrained "
                            "(with model_index.json), e.g. a Stable Diffusion inpainting model")
    from diffusers import AutoPipelineForInpainting  # imported here: diffusers costs seconds, only this needs it

    try:
        pipe = AutoPipelineForInpainting.from_pretrained(str(path), local_files_only=True, dtype=dtype)
    except (OSError, ValueError, TypeError, KeyError) as e:
        reason = f"no {e} in its config" if isinstance(e, KeyError) else (str(e).strip() or type(e).__name__)
        reason = reason.splitlines()[0]
        raise PipelineError(f"cannot load the inpainting pipeline at {path}: {reason}") from e
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def place_hand(hand: np.ndarray, canvas_size: tuple[int, int], at: tuple[int, int],
               keep: np.ndarray | None = None, fill: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """(canvas (H, W, 3) uint8 with the hand pasted with its top-left corner at `at` = (x, y), kept (H, W) bool).

    `keep` (the hand crop's shape, bool) limits what is kept to the hand itself (e.g. its mask), so the
    crop's own background is repainted with the body; by default the whole crop is kept.
    """
    (width, height), (x, y), (h, w) = canvas_size, at, hand.shape[:2]
    if x < 0 or y < 0 or x + w > width or y + h > height:
        raise PlacementError(f"a {w}x{h} hand at {at} does not fit a {width}x{height} canvas")
    canvas = np.full((height, width, 3), fill, np.uint8)
    canvas[y:y + h, x:x + w] = hand
    kept = np.zeros((height, width), bool)
    kept[y:y + h, x:x + w] = True if keep is None else keep
    if not kept.any():
        raise PlacementError("nothing of the hand is kept")
    return canvas, kept


def expansion(kept: np.ndarray, passes: int) -> list[np.ndarray]:
    """The kept region after each pass: grown by rings of equal width, the last pass the whole canvas."""
    distance = cv2.distanceTransform((~kept).astype(np.uint8), cv2.DIST_L2, 5)  # to the nearest kept pixel
    step = float(distance.max()) / passes
    return [kept | (distance <= step * (i + 1)) for i in range(passes - 1)] + [np.ones_like(kept)]


def working_size(pipe, width: int, height: int) -> tuple[int, int]:
    """The nearest size the pipeline's VAE and UNet divide evenly (64 for Stable Diffusion)."""
    multiple = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    return tuple(max(multiple, round(side / multiple) * multiple) for side in (width, height))


def inpaint(pipe, canvas: np.ndarray, repaint: np.ndarray, prompt: str, negative_prompt: str | None, steps: int,
            guidance_scale: float, seed: int, progress: Callable[[int], object] | None = None) -> np.ndarray:
    """One pipeline pass over the whole canvas, repainting where `repaint`; (H, W, 3) uint8. `progress(1)` is
    called after every denoising step."""
    from PIL import Image

    height, width = repaint.shape
    work_width, work_height = working_size(pipe, width, height)
    out = pipe(prompt=prompt, negative_prompt=negative_prompt, image=Image.fromarray(canvas),
               mask_image=Image.fromarray(repaint.astype(np.uint8) * 255), height=work_height, width=work_width,
               num_inference_steps=steps, guidance_scale=guidance_scale, output_type="np",
               generator=torch.Generator(pipe.device).manual_seed(seed),
               callback_on_step_end=None if progress is None else step_done(progress)).images[0]  # (h, w, 3), [0, 1]
    painted = (np.clip(out, 0, 1) * 255).round().astype(np.uint8)
    return painted if painted.shape[:2] == (height, width) else cv2.resize(painted, (width, height),
                                                                          interpolation=cv2.INTER_CUBIC)


def step_done(progress: Callable[[int], object]):
    """A diffusers step-end callback that counts the step and hands the pipeline its tensors back unchanged."""
    def callback(pipe, step, timestep, tensors):
        progress(1)
        return tensors
    return callback


def outpaint(pipe, hand: np.ndarray, canvas_size: tuple[int, int], at: tuple[int, int], prompt: str = "", *,
             keep: np.ndarray | None = None, passes: int = 3, steps: int = 30, guidance_scale: float = 7.5,
             negative_prompt: str | None = None, seed: int = 0,
             progress: Callable[[int], object] | None = None) -> np.ndarray:
    """The hand on a `canvas_size` (width, height) canvas with the rest painted around it; (H, W, 3) uint8.

    Each pass repaints everything not yet kept, conditioned on all that is, then keeps only the next
    ring out: what a pass keeps lies next to content it could see, so the body grows out of the hand
    rather than being painted all at once around it. `progress(1)` is called after every denoising step of
    every pass (passes x steps in all).
    """
    canvas, kept = place_hand(hand, canvas_size, at, keep)
    for i, grown in enumerate(expansion(kept, passes)):
        painted = inpaint(pipe, canvas, ~kept, prompt, negative_prompt, steps, guidance_scale, seed + i, progress)
        # Paste back: the pipeline round-trips the whole canvas through its VAE, which moves every pixel a
        # little, kept ones included. Restoring them from the canvas keeps the hand (and earlier rings) bit-exact.
        painted[kept] = canvas[kept]
        canvas[grown] = painted[grown]
        kept = grown
    return canvas
