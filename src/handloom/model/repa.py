"""REPA's frozen representation encoder from a local path: images in [-1, 1] -> (N, T, D) patch features."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DINOv2's input normalisation
IMAGENET_STD = (0.229, 0.224, 0.225)


class Dinov2Features(nn.Module):
    """A transformers Dinov2Model as REPA uses it: normalised input whose patch grid matches the DiT's, CLS dropped.

    REPA feeds DINOv2 224 px for a 256 px DiT-XL/2: 16×16 patches of 14 px, the DiT's 16×16 token grid.
    Here the grid is the DiT's own (`grid` tokens per side), so the REPA loss compares like with like.
    """

    def __init__(self, model, grid: int):
        super().__init__()
        self.model, self.grid = model, grid
        self.embed_dim = model.config.hidden_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.grid * self.model.config.patch_size
        x = F.interpolate((images + 1) / 2, size=(size, size), mode="bicubic", align_corners=False)
        hidden = self.model(pixel_values=(x - self.mean) / self.std).last_hidden_state  # (N, 1 + T, D)
        return hidden[:, -self.grid ** 2:]  # (N, T, D): patch tokens only (CLS and any registers come first)


class ScriptedFeatures(nn.Module):
    """A TorchScript encoder that already maps images in [-1, 1] to (N, T, D); D is read off one probe."""

    def __init__(self, module, resolution: int):
        super().__init__()
        self.module = module
        with torch.no_grad():
            self.embed_dim = module(torch.zeros(1, 3, resolution, resolution)).shape[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images)


def load_repa_encoder(path: str | Path | None, resolution: int, grid: int) -> nn.Module | None:
    """A frozen encoder with `embed_dim`, from a Dinov2Model directory or a TorchScript file; None disables REPA.

    A bare state dict is not accepted: it carries no architecture. Save DINOv2 with save_pretrained
    (config + weights), or script any other encoder with torch.jit.save.
    """
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        from transformers import Dinov2Model  # imported here: runs without REPA never pay for transformers

        encoder = Dinov2Features(Dinov2Model.from_pretrained(str(path), local_files_only=True), grid)
    else:
        encoder = ScriptedFeatures(torch.jit.load(str(path), map_location="cpu"), resolution)
    return encoder.requires_grad_(False).eval()
