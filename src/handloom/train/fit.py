"""The train stage: TrainParams -> the module, shards -> pair batches, a Lightning Trainer that resumes exactly."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from pathlib import Path

import fsspec
import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from handloom import schema
from handloom.io import atomic_path, remove_torn_writes
from handloom.logs import interactive
from handloom.model.repa import load_repa_encoder
from handloom.model.vae import load_autoencoder, vae_geometry
from handloom.params import TrainParams
from handloom.shards.conditioning import CHANNELS
from handloom.shards.reader import ExampleSpec
from handloom.shards.remote import read_parquet
from handloom.train.data import PairStream
from handloom.train.latents import LatentCache, open_cache
from handloom.train.module import HandDiffusionModule, ModelGeometry

CHECKPOINT = "last.ckpt"
# Settings that may change between runs without invalidating a checkpoint: how long, how logged, on what hardware,
# where the weights files lie. Any other change trains a new model from scratch.
RESUMABLE_CHANGES = {"max_steps", "sample_every_n_steps", "sample_count", "log_every_n_steps",
                     "checkpoint_every_n_steps", "num_workers", "precision", "grad_checkpointing", "accelerator",
                     "devices", "strategy", "vae_path", "repa_encoder_path"}


def model_geometry(p: TrainParams, repa_dim: int | None = None) -> ModelGeometry:
    """The DiT's grid and channels: pixels, or the VAE's latent grid and channels; `repa_dim`: the REPA encoder's."""
    if p.vae_path is None:
        input_size, image_channels = p.resolution, 3
    else:
        geometry = vae_geometry(p.vae_path)
        input_size, image_channels = geometry.latent_size(p.resolution), geometry.channels
    return ModelGeometry(input_size, image_channels, CHANNELS[p.conditioning], repa_dim)


def example_spec(p: TrainParams) -> ExampleSpec:
    """Images at p.resolution pixels; conditioning on the DiT's own grid (the latent grid with a VAE).

    Augmentation applies only where an rng is passed (training), never in evaluation.
    """
    input_size = model_geometry(p).input_size
    return ExampleSpec(p.resolution, p.conditioning, p.heatmap_sigma,
                       cond_resolution=input_size if input_size != p.resolution else None, augment=p.augment)


def train_loader(shards_dir: str | Path, p: TrainParams, rank: int = 0, start_batch: int = 0,
                 latents: LatentCache | None = None) -> torch.utils.data.DataLoader:
    """Batches from `start_batch` on, the same ones an uninterrupted run would have seen (see PairStream)."""
    spec = example_spec(p)
    if latents is not None:  # cached latents show the image as it is: a crop or flip would part them from it
        spec = dataclasses.replace(spec, augment=None)
    dataset = PairStream(shards_dir, "train", spec, p.batch_size, p.seed, rank, start_batch, latents)
    return torch.utils.data.DataLoader(dataset, batch_size=p.batch_size, num_workers=p.num_workers,
                                       persistent_workers=p.num_workers > 0)


def precision(p: TrainParams) -> str:
    """"auto": bf16-mixed where a GPU supports it (the DiT recipe), full precision on the CPU."""
    if p.precision != "auto":
        return p.precision
    gpu = p.accelerator != "cpu" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return "bf16-mixed" if gpu else "32"


def trainer_options(p: TrainParams) -> dict:
    """The stage's Trainer settings, less logger and checkpoints (benchmarks/train_step.py times exactly these)."""
    # Logging at least once by the last step, so DVCLive's declared metrics and plots exist whatever the params.
    return dict(max_steps=p.max_steps, accelerator=p.accelerator, devices=p.devices, strategy=p.strategy,
                precision=precision(p), gradient_clip_val=p.grad_clip,
                log_every_n_steps=min(p.log_every_n_steps, p.max_steps),
                enable_model_summary=False, limit_val_batches=0, deterministic=False)


CHECKPOINT_PATHS = ("dirpath", "best_model_path", "kth_best_model_path", "last_model_path")


def rebase_checkpoint_paths(checkpoint: dict, convert) -> dict:
    """The checkpoint with `convert` applied to the paths ModelCheckpoint keeps in its callback state."""
    callbacks = {}
    for key, state in checkpoint.get("callbacks", {}).items():
        if isinstance(state, dict) and "dirpath" in state:
            state = {**state, **{k: convert(state[k]) for k in CHECKPOINT_PATHS if state.get(k)},
                     "best_k_models": {convert(k): v for k, v in state.get("best_k_models", {}).items()}}
        callbacks[key] = state
    return {**checkpoint, "callbacks": callbacks} if "callbacks" in checkpoint else checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes beside the target and renames: a kill -9 mid-save leaves the previous checkpoint, never a torn one.

    ModelCheckpoint's absolute paths are stored relative to the checkpoint's folder, so the same training gives
    the same bytes (and DVC hash) in any clone, and made absolute again on load, as Lightning expects.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        folder = Path(path).resolve().parent
        checkpoint = rebase_checkpoint_paths(checkpoint, lambda p: os.path.relpath(p, folder))
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)

    def load_checkpoint(self, path, *args, **kwargs) -> dict:
        folder = Path(path).resolve().parent
        checkpoint = super().load_checkpoint(path, *args, **kwargs)
        return rebase_checkpoint_paths(checkpoint, lambda p: os.path.realpath(folder / p))


def shards_fingerprint(shards_dir: str | Path) -> str:
    """A digest of the shards a model trains on: their index and pairs, and each dataset's record of its inputs
    (which covers tar bytes that a change of crop or JPEG quality alters without moving an offset)."""
    root = str(shards_dir).rstrip("/")
    digest = hashlib.sha256()
    names = [schema.INDEX_FILE, schema.PAIRS_FILE]
    names += [f"{schema.STATS_DIR}/{schema.DATASET_RECORD_FILE.format(dataset=d)}"
              for d in sorted(read_parquet(f"{root}/{schema.INDEX_FILE}").dataset.unique())]
    for name in names:
        try:
            with fsspec.open(f"{root}/{name}", "rb") as f:
                digest.update(name.encode() + f.read())
        except FileNotFoundError:
            digest.update(name.encode())
    return digest.hexdigest()


class TrainedOn(Callback):
    """Keeps the fingerprint of the shards in the checkpoint: new data is a new run, not a resume."""

    def __init__(self, fingerprint: str):
        self.fingerprint = fingerprint

    def state_dict(self) -> dict:
        return {"shards": self.fingerprint}

    def load_state_dict(self, state_dict: dict) -> None:
        pass  # resumable_checkpoint has compared it already


class FinalSamples(Callback):
    """A sample grid at the last step when the every-n-steps grids miss it, so the declared
    reports/train/plots/images output exists whatever max_steps and sample_every_n_steps are."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step, n = trainer.global_step, module.params.sample_every_n_steps
        if step >= trainer.max_steps and step % n:
            module.log_samples(batch, step)


class StepLines(Callback):
    """In a log file, where Lightning's redrawn bar is one endless line: `train: step k/N loss x` every `every` steps
    and at the last, after a line saying what runs where."""

    def __init__(self, every: int):
        self.every, self.start, self.first = every, 0.0, 0

    def on_train_start(self, trainer, module) -> None:
        self.start, self.first = time.monotonic(), trainer.global_step
        if trainer.is_global_zero:
            print(f"train: steps {trainer.global_step + 1}-{trainer.max_steps} on {trainer.strategy.root_device}, "
                  f"{trainer.world_size} process(es), precision {trainer.precision}", flush=True)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if trainer.is_global_zero and (step % self.every == 0 or step >= trainer.max_steps):
            pace = (time.monotonic() - self.start) / max(1, step - self.first)
            print(f"train: step {step}/{trainer.max_steps} loss {float(outputs['loss']):.4f} ({pace:.2f} s/step)",
                  flush=True)


def resumable_checkpoint(models_dir: Path, p: TrainParams, geometry: ModelGeometry, fingerprint: str
                         ) -> tuple[Path | None, int]:
    """(the last checkpoint, its global step) if trained on the same shards with the same settings (but those in
    RESUMABLE_CHANGES) and short of p.max_steps, else (None, 0) after one line saying why the run starts from
    scratch."""
    path = models_dir / CHECKPOINT
    if not path.exists():
        return None, 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved = state["hyper_parameters"]
    if "train" not in saved:
        print(f"train: not resuming {path}: saved before the train-params hparams; starting from scratch")
        return None, 0
    current = p.model_dump(mode="json")
    changed = {k for k in current if saved["train"].get(k) != current[k]} - RESUMABLE_CHANGES
    changed = sorted(changed | {f"geometry.{k}" for k, v in dataclasses.asdict(geometry).items()
                                if saved["geometry"].get(k) != v})
    trained_on = state.get("callbacks", {}).get(TrainedOn.__qualname__, {}).get("shards")
    why = (f"{changed} changed" if changed else
           "the shards changed" if trained_on != fingerprint else
           f"max_steps {p.max_steps} is not above its step {state['global_step']}"
           if state["global_step"] >= p.max_steps else None)
    if why:
        print(f"train: not resuming {path}: {why}; starting from scratch")
        return None, 0
    return path, state["global_step"]


def fit(p: TrainParams, shards_dir: Path, models_dir: Path, log_dir: Path,
        latents_dir: Path | None = None, sampling: dict | None = None) -> HandDiffusionModule:
    """Train to p.max_steps, resuming from models_dir/last.ckpt when it is compatible.

    `sampling` is how the sample grids sample: the stage passes evaluate's (EvaluateParams.sampling()).

    `latents_dir` is the encode_latents stage's cache; without one (or for another VAE) latents are
    encoded on the fly. DDP (`devices` > 1) re-runs this function in every rank's process.
    """
    from handloom.train.live import LiveLogger, rewind_live  # imported here: dvclive is for training only

    L.seed_everything(p.seed, workers=True)
    geometry = model_geometry(p)
    repa_encoder = load_repa_encoder(p.repa_encoder_path, p.resolution, geometry.input_size // p.model.patch_size)
    if repa_encoder is not None:  # in the geometry, so turning REPA on or off is a new model, not a resume
        geometry = dataclasses.replace(geometry, repa_dim=repa_encoder.embed_dim)
    fingerprint = shards_fingerprint(shards_dir)
    ckpt, step = resumable_checkpoint(models_dir, p, geometry, fingerprint)
    module = HandDiffusionModule(p, geometry, sampling, repa_encoder=repa_encoder,
                                 autoencoder=load_autoencoder(p.vae_path))
    logger = LiveLogger(dir=str(log_dir), resume=ckpt is not None, save_dvc_exp=False, dvcyaml=False, report=None)
    # No version counter: a run that starts afresh overwrites last.ckpt instead of adding last-v1.ckpt, ...
    # to the persisted directory.
    checkpoints = ModelCheckpoint(dirpath=models_dir, save_last=True, save_top_k=0, enable_version_counter=False,
                                  every_n_train_steps=p.checkpoint_every_n_steps)
    options = trainer_options(p)
    progress = [] if interactive() else [StepLines(options["log_every_n_steps"])]
    trainer = L.Trainer(**options, logger=logger, plugins=[AtomicCheckpointIO()], enable_progress_bar=not progress,
                        callbacks=[checkpoints, TrainedOn(fingerprint), FinalSamples(), *progress])
    if trainer.is_global_zero:
        remove_torn_writes(models_dir)
        if ckpt is not None:
            rewind_live(log_dir, step)
    loader = train_loader(shards_dir, p, trainer.global_rank, step, open_cache(latents_dir, p))
    trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt, weights_only=True)
    trainer.save_checkpoint(models_dir / CHECKPOINT, weights_only=False)  # the final state, resumable too
    return module


def load_module(models_dir: Path, map_location: str = "cpu", autoencoder=None) -> HandDiffusionModule:
    """The trained module from its last checkpoint (weights_only: a checkpoint is data, not code).

    A latent-space model needs its `autoencoder` (model.vae.load_autoencoder(p.vae_path)) to sample images.
    """
    state = torch.load(Path(models_dir) / CHECKPOINT, map_location=map_location, weights_only=True)
    return HandDiffusionModule.from_checkpoint(state, autoencoder)
