"""diffusers' AutoencoderKL from a local weights path, behind the encode/decode pair the training module calls."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn


@dataclass(frozen=True)
class LatentGeometry:
    """What the DiT sees of an autoencoder: channels per latent pixel and pixels per latent pixel."""

    channels: int
    downscale: int

    def latent_size(self, resolution: int) -> int:
        if resolution % self.downscale:
            raise ValueError(f"train.resolution {resolution} must be a multiple of the VAE's downscale "
                             f"{self.downscale}")
        return resolution // self.downscale


def geometry_from_config(config) -> LatentGeometry:
    # Each encoder stage but the last halves the image (diffusers' VaeImageProcessor uses the same rule).
    return LatentGeometry(config["latent_channels"], 2 ** (len(config["block_out_channels"]) - 1))


def vae_geometry(path: str | Path) -> LatentGeometry:
    """The geometry from config.json alone, so planning a run does not load the weights."""
    from diffusers import AutoencoderKL

    return geometry_from_config(AutoencoderKL.load_config(str(path), local_files_only=True))


class LatentAutoencoder(nn.Module):
    """Images in [-1, 1] <-> latents in the DiT's units: (posterior mean - shift) × scaling_factor.

    encode takes the posterior mean, not a sample: latents are then a pure function of the images,
    so the cache is reproducible byte for byte and on-the-fly encoding matches it exactly. The
    posterior's std in SD's VAE is tiny next to the diffusion noise, so little is lost.
    """

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        config = vae.config
        self.geometry = geometry_from_config(config)
        self.scaling_factor = float(config.scaling_factor)
        self.shift_factor = float(getattr(config, "shift_factor", None) or 0.0)  # SD3/Flux VAEs shift too

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        mean = self.vae.encode(images).latent_dist.mean  # (N, C, H/f, W/f)
        return (mean - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.scaling_factor + self.shift_factor).sample  # (N, 3, H, W)


def load_autoencoder(path: str | Path | None) -> LatentAutoencoder | None:
    """The VAE saved at `path` (save_pretrained layout), frozen and in eval mode; None for pixel space."""
    if path is None:
        return None
    from diffusers import AutoencoderKL  # imported here: pixel-space runs never pay for diffusers

    vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True, low_cpu_mem_usage=False)
    return LatentAutoencoder(vae.requires_grad_(False).eval())


# Stable Diffusion 1.x's AutoencoderKL, as in the config.json of stabilityai/sd-vae-ft-mse (FoundHand's VAE): 4 latent
# channels, 8x downscale (four encoder stages). The GPU rehearsal and the GPU check build it with random weights: they
# need its shapes and its cost, not what it has learnt.
SD_VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                     layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                     up_block_types=("UpDecoderBlock2D",) * 4, act_fn="silu", norm_num_groups=32, sample_size=256,
                     scaling_factor=0.18215)


def save_random_autoencoder(path: str | Path, config: dict = SD_VAE_CONFIG, seed: int = 0) -> Path:
    """An AutoencoderKL of `config` with seeded random weights, saved where load_autoencoder reads it."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    AutoencoderKL(**config).save_pretrained(str(path))
    return Path(path)
