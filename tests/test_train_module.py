"""The Lightning module, trained for real on a tiny learnable dataset: loss, dropout, EMA, exact resume, samples."""
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn as nn
from dvclive.lightning import DVCLiveLogger
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from PIL import Image
from torch.utils.data import DataLoader

from handloom.params import TrainParams
from handloom.schema import BATCH_KEYS
from handloom.train.module import (
    HandDiffusionModule,
    ModelGeometry,
    draw_condition_dropout,
    lr_multiplier,
    repa_loss,
    warmup_cosine,
)

torch.set_num_threads(1)
SIZE = 16


def blob_samples(n: int, seed: int = 0) -> list[dict]:
    """A coloured blob on black: the reference gives its colour, the conditioning (heatmap + mask) its place."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")

    def blob():
        cy, cx = torch.rand(2, generator=g) * (SIZE - 8) + 4
        return torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0)[None]  # (1, H, W)

    samples = []
    for i in range(n):
        colour = torch.rand(3, 1, 1, generator=g) * 2 - 1
        ref_blob, tgt_blob = blob(), blob()
        samples.append(dict(
            reference=-1 + (colour + 1) * ref_blob, reference_cond=torch.cat([ref_blob, (ref_blob > 0.5).float()]),
            target=-1 + (colour + 1) * tgt_blob, target_cond=torch.cat([tgt_blob, (tgt_blob > 0.5).float()]),
            target_mask=(tgt_blob > 0.5).float(), flag=torch.tensor(i % 2)))
    return samples


def loader(n: int = 64) -> DataLoader:
    return DataLoader(blob_samples(n), batch_size=8, shuffle=False)


GEOMETRY = ModelGeometry(input_size=SIZE, image_channels=3, cond_channels=2, repa_dim=None)  # blobs: heatmap + mask


def make_module(geometry: ModelGeometry = GEOMETRY, sampling: dict | None = None, **train) -> HandDiffusionModule:
    """A tiny DiT with ε-prediction, uniform loss weights and the mask head; `train` overrides TrainParams."""
    base = dict(model=dict(depth=2, hidden_size=64, num_heads=2, patch_size=4, mask_head=True), prediction="eps",
                beta_schedule="linear", min_snr_gamma=None, hand_loss_weight=1.0, p_drop_reference=0.05,
                p_drop_pose=0.05, lr=5e-3, warmup_steps=3, max_steps=30, ema_decay=0.99)
    repa_encoder = train.pop("repa_encoder", None)
    autoencoder = train.pop("autoencoder", None)
    return HandDiffusionModule(TrainParams(**{**base, **train}), geometry, sampling, repa_encoder=repa_encoder,
                               autoencoder=autoencoder)


def trainer(max_steps: int, tmp_path: Path, callbacks=(), logger=False, precision="32") -> L.Trainer:
    return L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, precision=precision, logger=logger,
                     callbacks=list(callbacks), enable_progress_bar=False, enable_model_summary=False,
                     enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
                     default_root_dir=tmp_path, gradient_clip_val=1.0, log_every_n_steps=1)


class RecordLosses(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(trainer.callback_metrics["train/diffusion_loss"].item())


def test_batches_carry_the_schema_keys():
    assert set(next(iter(loader()))) == set(BATCH_KEYS)


def test_training_lowers_the_loss(tmp_path):
    L.seed_everything(0)
    record = RecordLosses()
    module, run = make_module(), trainer(30, tmp_path, [record])
    run.fit(module, loader(), loader(16))
    first, last = np.mean(record.losses[:8]), np.mean(record.losses[-8:])
    assert len(record.losses) == 30 and last < 0.7 * first, (first, last)
    # Validation draws the same t and noise every time: the same model gives the same loss.
    assert run.validate(module, loader(16))[0]["val/loss"] == run.validate(module, loader(16))[0]["val/loss"]


def test_bf16_mixed_trains(tmp_path):
    # The GPU recipe's autocast, run on the CPU: every loss term stays finite and the EMA stays float32.
    module = make_module(repa_weight=1.0, repa_encoder=PatchEncoder())
    run = trainer(3, tmp_path, precision="bf16-mixed")
    run.fit(module, loader(16))
    assert all(torch.isfinite(v) for k, v in run.callback_metrics.items() if k.startswith("train/"))
    assert next(module.ema.parameters()).dtype == torch.float32


def test_condition_dropout_rates_match_the_params():
    g = torch.Generator().manual_seed(0)
    drop_reference, drop_pose = draw_condition_dropout(200_000, 0.1, 0.2, 0.05, generator=g)
    assert drop_reference.float().mean().item() == pytest.approx(0.15, abs=0.005)
    assert drop_pose.float().mean().item() == pytest.approx(0.25, abs=0.005)
    assert (drop_reference & drop_pose).float().mean().item() == pytest.approx(0.05, abs=0.005)


def test_warmup_then_cosine():
    lr = warmup_cosine(10, 110)
    assert lr(0) == pytest.approx(0.1) and lr(9) == 1.0 and lr(60) == pytest.approx(0.5) and lr(110) == 0.0


def test_constant_schedule_stays_flat_after_the_warmup():
    lr = lr_multiplier("constant", 10, 110)
    assert lr(0) == pytest.approx(0.1) and lr(9) == lr(60) == lr(10_000) == 1.0
    assert lr_multiplier("constant", 0, 110)(0) == 1.0  # DiT: no warmup at all
    scheduler = make_module(lr_schedule="constant", warmup_steps=0).configure_optimizers()["lr_scheduler"]["scheduler"]
    assert scheduler.get_last_lr() == [5e-3]


def test_every_knob_of_the_module_comes_from_train_params():
    # The settings TrainConfig used to hide behind its own defaults now come from params.yaml's train section.
    module = make_module(grad_checkpointing=True, repa_layer=2, model=dict(depth=2, hidden_size=64, num_heads=2,
                         patch_size=4, mask_head=False), geometry=ModelGeometry(SIZE, 3, 2, repa_dim=24))
    assert module.model.grad_checkpointing and module.model.repa_layer == 2 and module.model.mask_head is None
    assert module.model.repa_projector is not None  # built from the geometry alone: loads without the encoder


@torch.no_grad()
def perturbed(module: HandDiffusionModule) -> HandDiffusionModule:
    """Move the model and its EMA apart, and away from the all-zero output of initialisation."""
    for p in module.parameters():
        p.add_(torch.randn_like(p) * 0.05)
    return module


def weights(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_resume_is_exact_and_checkpoints_load_weights_only(tmp_path):
    # Straight through: 8 steps, a checkpoint at step 8 (an epoch boundary), then 4 more.
    L.seed_everything(0)
    straight = make_module()
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=8, save_top_k=-1)
    trainer(12, tmp_path, [checkpoints]).fit(straight, loader())
    path = next((tmp_path / "ckpt").glob("*step=8.ckpt"))

    saved = torch.load(path, weights_only=True)
    assert saved["global_step"] == 8 and saved["hyper_parameters"]["train"]["model"]["depth"] == 2
    saved_ema = {k.removeprefix("ema."): v for k, v in saved["state_dict"].items() if k.startswith("ema.")}
    assert saved_ema and not all(torch.equal(saved_ema[k], v) for k, v in weights(straight.ema).items())

    class AtStart(Callback):
        def on_train_start(self, trainer, module):
            self.step, self.ema = trainer.global_step, weights(module.ema)

    L.seed_everything(123)  # a different seed: the checkpoint, not the caller, decides what comes next
    resumed, at_start = make_module(), AtStart()
    trainer(12, tmp_path, [at_start]).fit(resumed, loader(), ckpt_path=path, weights_only=True)
    assert at_start.step == 8
    assert all(torch.equal(at_start.ema[k], v) for k, v in saved_ema.items())
    for mine, theirs in ((resumed.model, straight.model), (resumed.ema, straight.ema)):
        a, b = weights(mine), weights(theirs)
        assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged from the straight one"

    loaded = HandDiffusionModule.load_from_checkpoint(path, weights_only=True)
    assert all(torch.equal(v, saved_ema[k]) for k, v in weights(loaded.ema).items())


class PatchEncoder(nn.Module):
    """A stand-in for a frozen DINOv2: 8x8 patches of the image to 24-dim tokens."""

    embed_dim = 24

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, self.embed_dim, 8, 8)

    def forward(self, images):
        return self.proj(images).flatten(2).transpose(1, 2)  # (N, 4, 24)


def test_mask_and_repa_losses_and_frozen_encoder_stays_out_of_checkpoints(tmp_path):
    L.seed_everything(0)
    encoder = PatchEncoder()
    module = make_module(repa_weight=1.0, repa_encoder=encoder)
    batch = next(iter(loader()))
    losses = module.losses(batch, drop=True)
    assert set(losses) == {"loss", "diffusion", "mask", "repa"}
    expected = losses["diffusion"] + 0.5 * losses["mask"] + losses["repa"]
    torch.testing.assert_close(losses["loss"], expected)
    assert losses["mask"].item() == pytest.approx(np.log(2), abs=1e-5)  # zero-initialised mask head: p = 0.5

    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2)
    trainer(2, tmp_path, [checkpoints]).fit(module, loader(16))
    assert not encoder.training and all(not p.requires_grad for p in encoder.parameters())
    state = torch.load(checkpoints.best_model_path, weights_only=True)["state_dict"]
    assert not any(k.startswith("repa_encoder.") for k in state) and "model.repa_projector.0.weight" in state
    HandDiffusionModule.load_from_checkpoint(checkpoints.best_model_path, repa_encoder=PatchEncoder())


@pytest.mark.parametrize("weight", [0.0, 0.5, 2.0])
def test_mask_loss_enters_the_total_with_weight_lambda(weight):
    module = perturbed(make_module(mask_loss_weight=weight))
    losses = module.losses(next(iter(loader(8))), drop=True, generator=torch.Generator().manual_seed(0))
    assert losses["mask"].item() > 0
    torch.testing.assert_close(losses["loss"], losses["diffusion"] + weight * losses["mask"])


class PoolingAutoencoder(nn.Module):
    """A stand-in for the VAE wrapper's encode/decode: 2x average-pool down, nearest up."""

    def encode(self, images):
        return torch.nn.functional.avg_pool2d(images, 2)

    def decode(self, latents):
        return torch.nn.functional.interpolate(latents, scale_factor=2)


def test_latent_space_trains_and_samples_at_latent_size():
    module = perturbed(make_module(ModelGeometry(SIZE // 2, 3, 2, None), autoencoder=PoolingAutoencoder()))
    batch = next(iter(loader(4)))
    for key in ("reference_cond", "target_cond"):  # conditioning comes at latent resolution
        batch[key] = torch.nn.functional.avg_pool2d(batch[key], 2)
    losses = module.losses(batch, drop=True)
    assert torch.isfinite(losses["loss"]) and set(losses) == {"loss", "diffusion", "mask"}
    # It trains: a few steps on the batch (same t and noise each time) lower the latent-space loss.
    optimizer = torch.optim.Adam(module.model.parameters(), lr=1e-3)
    fixed = lambda: module.losses(batch, drop=False, generator=torch.Generator().manual_seed(0))["loss"]
    before = fixed().item()
    for _ in range(10):
        optimizer.zero_grad()
        fixed().backward()
        optimizer.step()
    assert fixed().item() < 0.9 * before
    images = module.sample(batch, steps=2, appearance_scale=1.5, pose_scale=1.5, seed=0)
    assert images.shape == batch["target"].shape and images.abs().max() <= 1


def test_repa_loss_resizes_the_token_grid():
    tokens = torch.randn(2, 16, 8)
    features = torch.nn.functional.interpolate(
        tokens.transpose(1, 2).reshape(2, 8, 4, 4), size=(2, 2), mode="bilinear").flatten(2).transpose(1, 2)
    assert repa_loss(tokens, features).item() == pytest.approx(0.0, abs=1e-6)
    assert repa_loss(tokens, -features).item() == pytest.approx(2.0, abs=1e-6)


def test_samples_and_losses_reach_dvclive(tmp_path):
    L.seed_everything(0)
    module = make_module(sampling=dict(steps=3, appearance_scale=2.0, pose_scale=2.0, eta=0.0), sample_every_n_steps=2,
                         sample_count=2)
    live = tmp_path / "dvclive"
    trainer(4, tmp_path, logger=DVCLiveLogger(dir=str(live), save_dvc_exp=False, dvcyaml=False)).fit(module, loader(16))
    assert "loss" in json.loads((live / "metrics.json").read_text())["train"]
    assert (live / "plots" / "metrics" / "train" / "loss.tsv").read_text().count("\n") == 5  # header + 4 steps
    images = sorted(p.name for p in (live / "plots" / "images" / "samples").iterdir())
    assert images == ["2.png", "4.png"]
    with Image.open(live / "plots" / "images" / "samples" / "4.png") as grid:
        assert grid.size == (4 * SIZE, 2 * SIZE) and grid.mode == "RGB"  # ref | pose | target | generated


def test_loggers_without_images_are_left_alone(tmp_path):
    module = make_module(sampling=dict(steps=2, appearance_scale=2.0, pose_scale=2.0, eta=0.0), sample_every_n_steps=1)
    trainer(2, tmp_path, logger=CSVLogger(tmp_path)).fit(module, loader(16))
    assert module.global_step == 2


def test_samples_are_seeded():
    L.seed_everything(0)
    module = perturbed(make_module())
    batch = next(iter(loader(4)))

    def sample(seed, **kwargs):
        return module.sample(batch, steps=3, appearance_scale=2.0, pose_scale=1.5, seed=seed, **kwargs)

    first = sample(5)
    assert torch.equal(first, sample(5))
    assert not torch.equal(first, sample(6))
    assert first.shape == batch["target"].shape and first.abs().max() <= 1
    assert not torch.equal(first, sample(5, use_ema=False))
    stochastic = sample(5, eta=1.0)  # DDIM's η reaches the sampler, still seeded
    assert torch.equal(stochastic, sample(5, eta=1.0)) and not torch.equal(first, stochastic)


def test_hand_loss_weight_weighs_the_target_mask():
    batch = next(iter(loader(8)))
    module = perturbed(make_module(hand_loss_weight=5.0))
    weight = module.hand_weight(batch["target_mask"], batch["target"])
    mask = batch["target_mask"].bool()
    assert weight[mask].eq(5.0).all() and weight[~mask].eq(1.0).all() and mask.any() and (~mask).any()
    assert make_module().hand_weight(batch["target_mask"], batch["target"]) is None
    # The total moves with the weight: the same draws, another weighting.
    losses = [perturbed(make_module(hand_loss_weight=w)).losses(
        batch, drop=False, generator=torch.Generator().manual_seed(0))["diffusion"].item() for w in (1.0, 5.0)]
    assert losses[0] != pytest.approx(losses[1], rel=1e-3)


def test_min_snr_gamma_reaches_the_loss():
    plain, weighted = (make_module(min_snr_gamma=g, prediction="v").diffusion for g in (None, 5.0))
    assert plain.loss_weight.eq(1).all()
    snr = plain.sqrt_alpha_bar ** 2 / plain.sqrt_one_minus_alpha_bar ** 2
    torch.testing.assert_close(weighted.loss_weight, snr.clamp(max=5.0) / (snr + 1))
    # For v the weight peaks at γ / (γ + 1) where SNR = γ and fades at both ends.
    assert weighted.loss_weight.max().item() == pytest.approx(5 / 6, abs=0.01)
    assert weighted.loss_weight[0] < 0.01 and weighted.loss_weight[-1] < 0.01
