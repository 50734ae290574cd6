"""Gaussian diffusion in a few lines: β schedules, q_sample, the ε/v training loss and a seeded DDIM sampler."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

PREDICTIONS = ("eps", "v")
SCHEDULES = ("linear", "cosine")


def beta_schedule(name: str, num_steps: int) -> torch.Tensor:
    """(num_steps,) float64 βs: DDPM's linear one (scaled to the step count) or Nichol & Dhariwal's cosine."""
    if name == "linear":
        scale = 1000 / num_steps
        return torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64)
    if name == "cosine":
        s = torch.linspace(0, 1, num_steps + 1, dtype=torch.float64)
        alpha_bar = torch.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise ValueError(f"beta schedule must be one of {SCHEDULES}, not {name!r}")


def model_prediction(out) -> torch.Tensor:
    """Models may return the prediction alone or a dict with it under "out" (DiT, which adds mask logits)."""
    return out["out"] if isinstance(out, dict) else out


class GaussianDiffusion(nn.Module):
    """DDPM forward process and losses, DDIM sampling. A Module only so its tables follow the model's device."""

    def __init__(self, num_steps: int = 1000, schedule: str = "linear", prediction: str = "eps",
                 min_snr_gamma: float | None = None):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, not {prediction!r}")
        self.num_steps, self.prediction = num_steps, prediction
        alpha_bar = torch.cumprod(1 - beta_schedule(schedule, num_steps), dim=0)
        # Computed in float64, kept in float32; derived, so not part of checkpoints.
        self.register_buffer("sqrt_alpha_bar", alpha_bar.sqrt().float(), persistent=False)
        self.register_buffer("sqrt_one_minus_alpha_bar", (1 - alpha_bar).sqrt().float(), persistent=False)
        self.register_buffer("loss_weight", self.min_snr_weights(alpha_bar, min_snr_gamma).float(), persistent=False)

    def min_snr_weights(self, alpha_bar: torch.Tensor, gamma: float | None) -> torch.Tensor:
        """Per-timestep loss weights of Min-SNR-γ (Hang et al. 2023): the x0 error weighted by min(SNR, γ), so
        the nearly clean steps stop dominating the gradient; written for the ε or v loss. All ones without γ."""
        if gamma is None:
            return torch.ones_like(alpha_bar)
        snr = alpha_bar / (1 - alpha_bar)
        return snr.clamp(max=gamma) / (snr if self.prediction == "eps" else snr + 1)

    def _coefficients(self, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """√ᾱ_t and √(1-ᾱ_t) shaped to broadcast over x; t = -1 means "clean" (ᾱ = 1), DDIM's last step."""
        shape = (-1,) + (1,) * (x.dim() - 1)
        a = torch.where(t >= 0, self.sqrt_alpha_bar[t.clamp(min=0)], 1.0).to(x.dtype).view(shape)
        s = torch.where(t >= 0, self.sqrt_one_minus_alpha_bar[t.clamp(min=0)], 0.0).to(x.dtype).view(shape)
        return a, s

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε."""
        a, s = self._coefficients(t, x0)
        return a * x0 + s * noise

    def training_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """ε, or v = √ᾱ_t ε - √(1-ᾱ_t) x0 (Salimans & Ho)."""
        if self.prediction == "eps":
            return noise
        a, s = self._coefficients(t, x0)
        return a * noise - s * x0

    def predict_x0_and_eps(self, x_t: torch.Tensor, t: torch.Tensor,
                           pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both x0 and ε from a model prediction of either kind."""
        a, s = self._coefficients(t, x_t)
        if self.prediction == "eps":
            return (x_t - s * pred) / a, pred
        return a * x_t - s * pred, s * x_t + a * pred

    def training_loss(self, model_fn: Callable, x0: torch.Tensor, generator: torch.Generator | None = None,
                      weight: torch.Tensor | None = None, **cond) -> tuple[torch.Tensor, dict]:
        """MSE between the model's prediction at a uniform random t and its target (Min-SNR weighted when the
        diffusion has a γ); also the model's outputs.

        `model_fn(x_t, t, **cond)` returns a tensor or a dict with "out". `weight`, broadcast over x0,
        weighs the squared error per element (normalised by its mean, so the loss keeps its scale).
        """
        N = x0.shape[0]
        t = torch.randint(0, self.num_steps, (N,), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        out = model_fn(self.q_sample(x0, t, noise), t, **cond)
        error = (model_prediction(out).float() - self.training_target(x0, t, noise).float()) ** 2
        error = error * self.loss_weight[t].view((-1,) + (1,) * (error.dim() - 1))
        if weight is None:
            loss = error.mean()
        else:
            weight = weight.float().expand_as(error)
            loss = (error * weight).mean() / weight.mean()
        return loss, out if isinstance(out, dict) else {"out": out}

    def ddim_timesteps(self, steps: int) -> torch.Tensor:
        """`steps` timesteps from T-1 down to 0, evenly spaced."""
        return torch.linspace(self.num_steps - 1, 0, steps, device=self.sqrt_alpha_bar.device).round().long()

    @torch.no_grad()
    def ddim_sample(self, model_fn: Callable, shape: tuple, steps: int = 50, eta: float = 0.0,
                    generator: torch.Generator | None = None, clip_denoised: bool = True) -> torch.Tensor:
        """DDIM (Song et al.) from pure noise; `model_fn(x_t, t)` as in training_loss.

        All randomness comes from `generator` (on the model's device), so a seed fixes the image.
        `clip_denoised` clamps the x0 estimate to [-1, 1], right for pixels, wrong for latents.
        """
        device = self.sqrt_alpha_bar.device
        x = torch.randn(shape, device=device, generator=generator)
        timesteps = self.ddim_timesteps(steps)
        for t_now, t_next in zip(timesteps, torch.cat([timesteps[1:], timesteps.new_tensor([-1])])):
            t = t_now.expand(shape[0])
            x0, eps = self.predict_x0_and_eps(x, t, model_prediction(model_fn(x, t)).float())
            if clip_denoised:
                x0 = x0.clamp(-1, 1)
                a, s = self._coefficients(t, x)
                eps = (x - a * x0) / s  # keep ε consistent with the clipped x0
            x = self.ddim_step(x, x0, eps, t, t_next.expand(shape[0]), eta, generator)
        return x

    def ddim_step(self, x, x0, eps, t, t_next, eta: float, generator) -> torch.Tensor:
        """x_{t_next} from the x0 and ε estimates at t; eta = 0 is deterministic, 1 is DDPM-like."""
        a, s = self._coefficients(t, x)
        a_next, s_next = self._coefficients(t_next, x)
        # σ from DDIM eq. 16, written with √ᾱ: σ² = (1-ᾱ')/(1-ᾱ) · (1 - ᾱ/ᾱ').
        sigma = eta * (s_next / s) * (1 - (a / a_next) ** 2).clamp(min=0).sqrt()
        x_next = a_next * x0 + (s_next ** 2 - sigma ** 2).clamp(min=0).sqrt() * eps
        if eta > 0:
            x_next = x_next + sigma * torch.randn(x.shape, device=x.device, generator=generator)
        return x_next
