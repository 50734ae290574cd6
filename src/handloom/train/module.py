"""The Lightning module that trains the reference-to-target DiT: losses, condition dropout, EMA, schedule, samples."""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import lightning as L
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from handloom.model.diffusion import GaussianDiffusion
from handloom.model.dit import DiT
from handloom.params import EvaluateParams, TrainParams

# Frozen helpers passed in from outside: never trained, never saved (their weights are files the user points to).
FROZEN = ("repa_encoder", "autoencoder")


@dataclass(frozen=True)
class ModelGeometry:
    """What the DiT's shape takes from files rather than from params: the image grid and channels (pixels, or the
    VAE's latents), the conditioning's channel count, and the REPA encoder's feature width (None: no REPA)."""

    input_size: int
    image_channels: int
    cond_channels: int
    repa_dim: int | None


def draw_condition_dropout(n: int, p_reference: float, p_pose: float, p_both: float, device=None,
                           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(drop_reference, drop_pose), each (n,) bool, from one uniform draw per sample (InstructPix2Pix-style).

    The three events are exclusive, so the reference is dropped at rate p_reference + p_both and the
    pose at p_pose + p_both, and the model sees all four combinations the guidance will ask for.
    """
    u = torch.rand(n, device=device, generator=generator)
    only_reference = u < p_reference
    only_pose = (u >= p_reference) & (u < p_reference + p_pose)
    both = (u >= p_reference + p_pose) & (u < p_reference + p_pose + p_both)
    return only_reference | both, only_pose | both


def warmup_cosine(warmup_steps: int, max_steps: int):
    """LR multiplier: linear from 0 over the warmup, then a cosine to 0 at max_steps."""
    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return 0.5 * (1 + math.cos(math.pi * progress))
    return multiplier


def warmup_constant(warmup_steps: int):
    """LR multiplier: linear from 0 over the warmup, then 1 (DiT trains at a constant rate)."""
    return lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


def lr_multiplier(schedule: Literal["cosine", "constant"], warmup_steps: int, max_steps: int):
    return warmup_cosine(warmup_steps, max_steps) if schedule == "cosine" else warmup_constant(warmup_steps)


def repa_loss(tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity between projected model tokens (N, T, D) and encoder features (N, T', D).

    When the token grids differ, the model's grid is resized to the encoder's (both assumed square).
    """
    if tokens.shape[1] != features.shape[1]:
        N, T, D = tokens.shape
        side, target_side = int(T ** 0.5), int(features.shape[1] ** 0.5)
        grid = tokens.transpose(1, 2).reshape(N, D, side, side)  # (N, D, h, w)
        grid = F.interpolate(grid, size=(target_side, target_side), mode="bilinear", align_corners=False)
        tokens = grid.flatten(2).transpose(1, 2)  # (N, T', D)
    return 1 - F.cosine_similarity(tokens.float(), features.float(), dim=-1).mean()


def to_uint8_image(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [-1, 1] -> (H, W, 3) uint8; one channel becomes gray."""
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu()
    return x.expand(3, -1, -1).permute(1, 2, 0).numpy()


def sample_grid(batch: dict, generated: torch.Tensor) -> np.ndarray:
    """One row per sample: reference | target conditioning (max over channels) | target | generated."""
    cond = batch["target_cond"].amax(1, keepdim=True)  # (N, 1, H, W)
    lo, hi = cond.amin((2, 3), keepdim=True), cond.amax((2, 3), keepdim=True)
    cond = (cond - lo) / (hi - lo).clamp(min=1e-6) * 2 - 1
    cond = F.interpolate(cond, size=generated.shape[-2:])  # latent-resolution heatmaps next to pixels
    columns = (batch["reference"], cond, batch["target"], generated)
    rows = [np.concatenate([to_uint8_image(c[i]) for c in columns], axis=1) for i in range(generated.shape[0])]
    return np.concatenate(rows, axis=0)


class HandDiffusionModule(L.LightningModule):
    """Trains DiT to denoise the target given the reference, both conditionings and the pair flag.

    Built from TrainParams alone (no defaults of its own) plus the ModelGeometry the files decide.

    `repa_encoder`: frozen nn.Module mapping target images in [-1, 1] to (N, T', D) features (REPA).
    `autoencoder`: frozen nn.Module with encode(images) -> latents and decode(latents) -> images;
    None trains in pixel space. Batches may carry `reference_latent` / `target_latent` (the latent
    cache): those are used instead of encoding. Neither helper is saved in checkpoints.
    """

    def __init__(self, train: TrainParams | dict, geometry: ModelGeometry | dict, sampling: dict | None = None,
                 repa_encoder: nn.Module | None = None, autoencoder: nn.Module | None = None):
        """`train`: params.yaml's train section, the only source of settings; `geometry`: see ModelGeometry.
        `sampling`: how the training grids sample (EvaluateParams.sampling(), so they look like evaluate's
        samples; EvaluateParams' defaults when None); logging only, so not saved."""
        super().__init__()
        self.params = TrainParams.model_validate(train)
        geometry = ModelGeometry(**geometry) if isinstance(geometry, dict) else geometry
        if repa_encoder is not None and geometry.repa_dim is None:  # the encoder decides the projector's width
            geometry = dataclasses.replace(geometry, repa_dim=repa_encoder.embed_dim)
        self.geometry = geometry
        self.sampling = sampling if sampling is not None else EvaluateParams().sampling()
        # Plain dicts, so checkpoints load with weights_only=True and load_from_checkpoint rebuilds the module.
        self.save_hyperparameters({"train": self.params.model_dump(mode="json"),
                                   "geometry": dataclasses.asdict(self.geometry)})
        self.repa_encoder, self.autoencoder = repa_encoder, autoencoder
        for frozen in (repa_encoder, autoencoder):
            if frozen is not None:
                frozen.requires_grad_(False).eval()
        self.model = self.build_model(self.params, self.geometry)
        # EMA is a frozen copy inside the module: it is in state_dict (so checkpoints and exact resume
        # carry it), follows the module across devices, and DDP ignores it (no grads). Our own update
        # rather than swa_utils.AveragedModel: no wrapper prefix in keys, no n_averaged bookkeeping,
        # and one fused _foreach_lerp_ per step.
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        p = self.params
        self.diffusion = GaussianDiffusion(p.diffusion_steps, p.beta_schedule, p.prediction, p.min_snr_gamma)
        self._step_batch: dict | None = None  # the step's last batch, for its sample grid
        self.generator: torch.Generator | None = None  # made in on_train_start
        self._resumed_generator_states = None
        self.register_load_state_dict_post_hook(self._ignore_missing_frozen)

    @classmethod
    def from_checkpoint(cls, state: dict, autoencoder: nn.Module | None = None) -> "HandDiffusionModule":
        """The module a checkpoint (torch.load(..., weights_only=True)) holds, in eval mode, built from its hparams."""
        hparams = state["hyper_parameters"]
        if "train" not in hparams:
            raise ValueError("the checkpoint predates the train-params hparams (it holds `config`): retrain it")
        module = cls(hparams["train"], hparams["geometry"], autoencoder=autoencoder)
        module.load_state_dict(state["state_dict"])
        return module.eval()

    @staticmethod
    def build_model(p: TrainParams, geometry: ModelGeometry) -> DiT:
        # The geometry carries repa_dim, so a REPA-trained checkpoint loads for sampling with no encoder around.
        m, g = p.model, geometry
        repa_layer = (p.repa_layer or max(1, m.depth // 3)) if g.repa_dim else None
        return DiT(g.input_size, m.patch_size, g.image_channels, g.cond_channels, m.hidden_size, m.depth,
                   m.num_heads, m.mlp_ratio, m.mask_head, repa_layer, g.repa_dim, p.grad_checkpointing)

    # --- frozen helpers: kept in eval mode, kept out of checkpoints --------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        for name in FROZEN:
            if getattr(self, name) is not None:
                getattr(self, name).eval()
        return self

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.split(".", 1)[0] in FROZEN]:
            del state[key]
        if self.generator is not None:
            checkpoint["generator_states"] = self.gather_generator_states()

    @staticmethod
    def _ignore_missing_frozen(module, incompatible_keys) -> None:
        missing = incompatible_keys.missing_keys
        missing[:] = [k for k in missing if k.split(".", 1)[0] not in FROZEN]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Applied when training starts, once the device and rank are known.
        self._resumed_generator_states = checkpoint.get("generator_states")

    # --- exact resume: our own generator draws t, noise and condition dropout ----------------------
    def on_train_start(self) -> None:
        # Not the global one: DataLoaders draw their seeds from that at times Lightning chooses, so a
        # resumed run would drift. Seeded from seed_everything's seed, distinct per rank.
        self.generator = torch.Generator(device=self.device)
        states = self._resumed_generator_states
        if states is None:
            self.generator.manual_seed((torch.initial_seed() + self.global_rank) % 2**63)
        else:
            self.generator.set_state(states[self.global_rank % len(states)])  # a new world size reuses streams
            self._resumed_generator_states = None

    def gather_generator_states(self) -> torch.Tensor:
        """Every rank's generator state as a (world_size, L) uint8 tensor: plain tensors for weights_only.

        on_save_checkpoint runs on every rank (only rank 0 writes), so the gather is safe there.
        """
        state = self.generator.get_state().to(self.device)
        return self.all_gather(state).reshape(self.trainer.world_size, -1).cpu()

    # --- image space <-> model space --------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images if self.autoencoder is None else self.autoencoder.encode(images)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents if self.autoencoder is None else self.autoencoder.decode(latents)

    def model_space(self, batch: dict, name: str) -> torch.Tensor:
        """batch[name] ("target" or "reference") as the DiT sees it: the cached latent if the batch has one."""
        cached = batch.get(f"{name}_latent")
        return cached if cached is not None else self.encode(batch[name])

    # --- training ---------------------------------------------------------------------------------
    def losses(self, batch: dict, drop: bool, generator: torch.Generator | None = None) -> dict:
        """Each loss term and their weighted sum under "loss"; `drop` applies condition dropout."""
        c = self.params
        N = batch["target"].shape[0]
        drop_reference, drop_pose = (draw_condition_dropout(N, c.p_drop_reference, c.p_drop_pose, c.p_drop_both,
                                                            self.device, generator) if drop else (None, None))
        with torch.no_grad():
            x0, reference = self.model_space(batch, "target"), self.model_space(batch, "reference")
        diffusion, out = self.diffusion.training_loss(
            self.model, x0, generator, self.hand_weight(batch["target_mask"], x0),
            target_cond=batch["target_cond"], reference=reference,
            reference_cond=batch["reference_cond"], flag=batch["flag"],
            drop_reference=drop_reference, drop_pose=drop_pose)
        losses = {"diffusion": diffusion}
        total = diffusion
        if "mask_logits" in out:
            logits = out["mask_logits"].float()  # (N, 1, h, w)
            mask = F.interpolate(batch["target_mask"].float(), size=logits.shape[-2:], mode="area")
            losses["mask"] = F.binary_cross_entropy_with_logits(logits, mask)
            total = total + c.mask_loss_weight * losses["mask"]
        if self.repa_encoder is not None:
            with torch.no_grad():
                features = self.repa_encoder(batch["target"])  # (N, T', D)
            losses["repa"] = repa_loss(out["repa_tokens"], features)
            total = total + c.repa_weight * losses["repa"]
        return {"loss": total, **losses}

    def hand_weight(self, mask: torch.Tensor, x0: torch.Tensor) -> torch.Tensor | None:
        """(N, 1, h, w) loss weights on x0's grid: hand_loss_weight on the hand, 1 elsewhere; None when uniform.

        The best prediction stays the same; short runs just spend more of their gradient on the hand,
        the part the hand metrics read.
        """
        w = self.params.hand_loss_weight
        if w == 1.0:
            return None
        return 1 + (w - 1) * F.interpolate(mask.float(), size=x0.shape[-2:], mode="area")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self._step_batch = batch
        losses = self.losses(batch, drop=True, generator=self.generator)
        self.log_losses("train", losses)
        return losses["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # The same t and noise at every validation, so the curve moves only when the model does.
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        self.log_losses("val", self.losses(batch, drop=False, generator=generator))

    def log_losses(self, stage: str, losses: dict) -> None:
        """`<stage>/loss` (the total) and `<stage>/<term>_loss`; validation averages over ranks."""
        names = {k: f"{stage}/loss" if k == "loss" else f"{stage}/{k}_loss" for k in losses}
        sync = stage != "train"  # per-step training values stay per-rank: no all-reduce per step
        self.log_dict({names[k]: v for k, v in losses.items()}, sync_dist=sync)

    def configure_optimizers(self):
        p = self.params
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                      lr_multiplier(p.lr_schedule, p.warmup_steps, p.max_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def optimizer_step(self, *args, **kwargs) -> None:
        # Here, not in on_train_batch_end: this runs once per real step (gradient accumulation) and
        # before ModelCheckpoint's on_train_batch_end, so a checkpoint holds this step's average, and
        # comes after this step's grid: a run killed in between resumes past a grid it has written.
        super().optimizer_step(*args, **kwargs)
        self.update_ema()
        step = self.global_step + 1  # Lightning counts the step once this hook returns
        if step % self.params.sample_every_n_steps == 0:
            self.log_samples(self._step_batch, step)
        self._step_batch = None

    @torch.no_grad()
    def update_ema(self) -> None:
        # Warm the decay up (timm/Karras) so short CPU runs still get a useful average.
        step = self.global_step
        decay = min(self.params.ema_decay, (1 + step) / (10 + step))
        ema, model = list(self.ema.parameters()), list(self.model.parameters())
        torch._foreach_lerp_(ema, model, 1 - decay)

    # --- sampling ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, batch: dict, steps: int, appearance_scale: float, pose_scale: float, seed: int,
               use_ema: bool = True, eta: float = 0.0) -> torch.Tensor:
        """Target images in [-1, 1] for the batch's reference and target conditioning, by guided DDIM."""
        model = self.ema if use_ema else self.model
        reference = self.model_space(batch, "reference")
        N = reference.shape[0]
        shape = (N, model.image_channels, *batch["target_cond"].shape[-2:])

        def guided(x_t, t):
            return model.forward_with_cfg(x_t, t, batch["target_cond"], reference, batch["reference_cond"],
                                          batch["flag"], appearance_scale, pose_scale)

        generator = torch.Generator(device=self.device).manual_seed(seed)
        latents = self.diffusion.ddim_sample(guided, shape, steps, eta, generator=generator,
                                             clip_denoised=self.autoencoder is None)
        return self.decode(latents).clamp(-1, 1)

    def log_samples(self, batch: dict, step: int) -> None:
        """A grid of EMA samples through the logger, if it takes images (DVCLive's Live.log_image)."""
        log_image = getattr(getattr(self.logger, "experiment", None), "log_image", None)
        if log_image is None or not self.trainer.is_global_zero:
            return
        batch = {k: v[: self.params.sample_count] for k, v in batch.items()}
        generated = self.sample(batch, **self.sampling, seed=self.params.seed)
        log_image(f"samples/{step}.png", sample_grid(batch, generated))
