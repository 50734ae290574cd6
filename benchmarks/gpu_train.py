"""The GPU check's training run: the gpu-b2-256 preset for 200 steps on the default data (data/shards), with SD's VAE
architecture at random weights (throughput and memory do not depend on what it has learnt), through encode_latents and
the train stage's own pieces (module, latent-cache loader with its workers, Trainer options). Throughput from the
median step time after a warmup; peak GPU memory from the allocator. Writes benchmarks/results.json "gpu_train".
`--set key=value` overrides a train param (a CPU smoke run)."""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from handloom.model.vae import save_random_autoencoder
from handloom.orchestrate.presets import preset_params
from handloom.train.fit import model_geometry, train_loader, trainer_options
from handloom.train.latents import encode_latents, open_cache
from handloom.train.module import HandDiffusionModule
from record import record

ROOT = Path(__file__).resolve().parents[1]


class StepTimer(Callback):
    """Seconds from each batch start to the next (the loader's wait included), the GPU caught up."""

    def __init__(self):
        self.starts = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.starts.append(time.perf_counter())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="gpu-b2-256")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--shards", type=Path, default=ROOT / "data" / "shards")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="train param override")
    args = parser.parse_args()
    if not (args.shards / "index.parquet").exists():
        raise SystemExit(f"error: no shards in {args.shards}: run `dvc repro shard` first")
    params = preset_params(args.preset, ROOT / "params.yaml")
    overrides = {k: v if k == "precision" else yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = params.train.model_dump()
        for dotted, value in dict(max_steps=args.steps, devices=1, strategy="auto", log_every_n_steps=1,
                                  sample_every_n_steps=args.steps, checkpoint_every_n_steps=args.steps,
                                  vae_path=str(save_random_autoencoder(tmp / "sd-vae")), **overrides).items():
            *parents, leaf = dotted.split(".")
            node = data
            for key in parents:
                node = node[key]
            node[leaf] = value
        p = type(params.train).model_validate(data)
        start = time.perf_counter()
        encode_latents(args.shards, tmp / "latents", p)
        encode_s = time.perf_counter() - start
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        L.seed_everything(p.seed)
        module = HandDiffusionModule(p, model_geometry(p), params.evaluate.sampling())
        timer = StepTimer()
        trainer = L.Trainer(**trainer_options(p), logger=False, enable_checkpointing=False, callbacks=[timer])
        trainer.fit(module, train_loader(args.shards, p, latents=open_cache(tmp / "latents", p)))
        fit_s = time.perf_counter() - start
        warmup = min(args.warmup, args.steps - 2)
        seconds = statistics.median(b - a for a, b in zip(timer.starts[warmup:], timer.starts[warmup + 1:]))
    result = dict(preset=args.preset, steps=args.steps, batch_size=p.batch_size, precision=p.precision,
                  device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                  steps_per_s=round(1 / seconds, 3), pairs_per_s=round(p.batch_size / seconds, 1),
                  peak_memory_gb=round(torch.cuda.max_memory_allocated() / 1e9, 2) if torch.cuda.is_available()
                  else None,
                  encode_latents_s=round(encode_s, 1), fit_wall_s=round(fit_s, 1), overrides=overrides,
                  command="python benchmarks/gpu_train.py")
    print(result)
    record("gpu_train", result)


if __name__ == "__main__":
    main()
