"""The train stage: params -> TrainConfig, shards -> pair batches, a Lightning Trainer that resumes exactly."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from handloom import schema
from handloom.io import read_table
from handloom.params import TrainParams
from handloom.shards.conditioning import CHANNELS
from handloom.shards.reader import ExampleSpec, pair_dataset
from handloom.train.module import HandDiffusionModule, TrainConfig

CHECKPOINT = "last.ckpt"
# Fields that may change between runs without invalidating a checkpoint: resuming extends the schedule.
RESUMABLE_CHANGES = {"max_steps", "sample_every_n_steps", "sample_steps", "sample_count"}


def train_config(p: TrainParams) -> TrainConfig:
    m = p.model
    return TrainConfig(
        input_size=p.resolution, image_channels=3, cond_channels=CHANNELS[p.conditioning], depth=m.depth,
        hidden_size=m.hidden_size, num_heads=m.num_heads, patch_size=m.patch_size, mlp_ratio=m.mlp_ratio,
        mask_head=m.mask_head, num_diffusion_steps=p.diffusion_steps, prediction=p.prediction, lr=p.lr,
        weight_decay=p.weight_decay, warmup_steps=p.warmup_steps, max_steps=p.max_steps, ema_decay=p.ema_decay,
        p_drop_reference=p.p_drop_reference, p_drop_pose=p.p_drop_pose, p_drop_both=p.p_drop_both,
        mask_loss_weight=p.mask_loss_weight, sample_every_n_steps=p.sample_every_n_steps, sample_seed=p.seed)


def example_spec(p: TrainParams) -> ExampleSpec:
    return ExampleSpec(p.resolution, p.conditioning, p.heatmap_sigma)


def shard_urls(shards_dir: Path, split: str) -> list[str]:
    index = read_table(shards_dir / schema.INDEX_FILE).to_pandas()
    return [str(shards_dir / s) for s in sorted(index.loc[index.split == split, "shard"].unique())]


def train_loader(shards_dir: Path, p: TrainParams) -> torch.utils.data.DataLoader:
    pairs = read_table(shards_dir / schema.PAIRS_FILE).to_pandas()
    dataset = pair_dataset(shard_urls(shards_dir, "train"), pairs[pairs.split == "train"], example_spec(p),
                           seed=p.seed, epoch_size=p.max_steps * p.batch_size)
    return torch.utils.data.DataLoader(dataset, batch_size=p.batch_size, num_workers=p.num_workers,
                                       persistent_workers=p.num_workers > 0)


def resumable_checkpoint(models_dir: Path, config: TrainConfig) -> Path | None:
    """The last checkpoint if it was trained with the same model and data settings, else None."""
    path = models_dir / CHECKPOINT
    if not path.exists():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=True)["hyper_parameters"]["config"]
    current = dataclasses.asdict(config)
    changed = {k for k in current if saved.get(k) != current[k]} - RESUMABLE_CHANGES
    if changed:
        print(f"train: not resuming {path}: {sorted(changed)} changed; starting from scratch")
        return None
    return path


def fit(p: TrainParams, shards_dir: Path, models_dir: Path, log_dir: Path) -> HandDiffusionModule:
    """Train to p.max_steps, resuming from models_dir/last.ckpt when it is compatible."""
    from dvclive.lightning import DVCLiveLogger

    L.seed_everything(p.seed, workers=True)
    config = train_config(p)
    ckpt = resumable_checkpoint(models_dir, config)
    module = HandDiffusionModule(config)
    logger = DVCLiveLogger(dir=str(log_dir), resume=ckpt is not None, save_dvc_exp=False, dvcyaml=False,
                           report=None)
    trainer = L.Trainer(
        max_steps=p.max_steps, accelerator=p.accelerator, devices=p.devices, strategy=p.strategy,
        precision=p.precision, gradient_clip_val=p.grad_clip, logger=logger, log_every_n_steps=p.log_every_n_steps,
        callbacks=[ModelCheckpoint(dirpath=models_dir, save_last=True, save_top_k=0, every_n_train_steps=50)],
        enable_model_summary=False, limit_val_batches=0, deterministic=False)
    trainer.fit(module, train_dataloaders=train_loader(shards_dir, p), ckpt_path=ckpt)
    trainer.save_checkpoint(models_dir / CHECKPOINT)  # the final state, whatever step the callback last saw
    return module


def load_module(models_dir: Path, map_location: str = "cpu") -> HandDiffusionModule:
    """The trained module from its last checkpoint (weights_only: a checkpoint is data, not code)."""
    state = torch.load(Path(models_dir) / CHECKPOINT, map_location=map_location, weights_only=True)
    module = HandDiffusionModule(state["hyper_parameters"]["config"])
    module.load_state_dict(state["state_dict"])
    return module.eval()
