"""Lightning's training step against a plain PyTorch loop on the same model and batch; DiT MFU with --gpu.

Default (CPU): the train stage's own model, batch and Trainer settings from params.yaml. The two
loops alternate step by step in one process (ABAB...): after each Lightning step a callback runs one
plain step on the same batch, so load from other processes hits both alike. The ratio is Lightning
steps/s ÷ plain steps/s, the median over step pairs; goal ≥ 0.95. The ratio of process CPU time is
recorded beside it (`cpu_time_ratio`), a second view that the neighbours' load moves less.

--gpu: DiT-B/2 and DiT-XL/2 in latent space at 256 px (4×32×32 latents, heatmaps42) under bf16
autocast: steps/s of both loops, FLOPs per step counted by torch.utils.flop_counter on one forward +
backward, and MFU against the card's dense bf16 peak (goal ≥ 35 %).

Writes benchmarks/results.json: "train_step" (CPU), "train_step_gpu" (--gpu), merged into the file.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from handloom.model.dit import dit_size
from handloom.params import TrainParams, load_params
from handloom.schema import FLAG
from handloom.shards.conditioning import CHANNELS
from handloom.train.fit import model_geometry, trainer_options
from handloom.train.live import LiveLogger
from handloom.train.module import HandDiffusionModule, ModelGeometry
from record import record

ROOT = Path(__file__).resolve().parents[1]
# Dense bf16 peak FLOP/s by device name (no sparsity), from the vendors' data sheets.
PEAK_BF16 = {"H200": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12,
             "L40S": 362e12}  # first match wins: the specific names come first
GPU_MODELS = {"DiT-B/2": 64, "DiT-XL/2": 32}  # per-GPU batch (pairs): ~30 GB of activations on an 80 GB card


def synthetic_batch(geometry: ModelGeometry, batch_size: int, device: str) -> dict:
    """A batch with the training batch's keys and shapes; the values do not change the step's cost."""
    g = torch.Generator().manual_seed(0)
    size, n = geometry.input_size, batch_size

    def uniform(*shape):
        return (torch.rand(n, *shape, generator=g) * 2 - 1).to(device)

    return dict(reference=uniform(geometry.image_channels, size, size),
                target=uniform(geometry.image_channels, size, size),
                reference_cond=uniform(geometry.cond_channels, size, size).clamp(min=0),
                target_cond=uniform(geometry.cond_channels, size, size).clamp(min=0),
                target_mask=(uniform(1, size, size) > 0).float(), flag=torch.full((n,), FLAG["pose"], device=device))


class Repeat(torch.utils.data.Dataset):
    """The same batch `length` times; with batch_size=None the DataLoader hands it over untouched."""

    def __init__(self, batch: dict, length: int):
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return self.batch


def loader(batch: dict, steps: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(Repeat(batch, steps), batch_size=None)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def clock(device: str) -> tuple[float, float]:
    """(wall, process CPU) seconds, after the GPU has caught up."""
    synchronize(device)
    return time.perf_counter(), time.process_time()


def elapsed(start: tuple[float, float], device: str) -> tuple[float, float]:
    return tuple(b - a for a, b in zip(start, clock(device)))


class PlainLoop:
    """The step by hand, as a plain PyTorch script would: loss, backward, clip, AdamW, LR schedule, EMA."""

    def __init__(self, geometry: ModelGeometry, p: TrainParams, device: str):
        torch.manual_seed(0)
        self.module = HandDiffusionModule(p, geometry).to(device).train()
        optimizers = self.module.configure_optimizers()  # the module's own AdamW and warmup-cosine
        self.optimizer, self.scheduler = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
        self.generator = torch.Generator(device=device).manual_seed(0)
        self.clip = p.grad_clip
        self.autocast = torch.autocast(device, torch.bfloat16, enabled=trainer_options(p)["precision"] == "bf16-mixed")

    def step(self, batch: dict) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast:
            loss = self.module.losses(batch, drop=True, generator=self.generator)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.module.model.parameters(), self.clip)
        self.optimizer.step()
        self.scheduler.step()
        self.module.update_ema()


class Interleaved(Callback):
    """After every Lightning step, one plain step on the same batch: A B A B at the grain of one step,
    so the neighbours' load hits both alike. A Lightning step is batch start to next batch start
    (its logging, LR step and fetch included) less the plain step run in between."""

    def __init__(self, plain: PlainLoop, warmup: int, device: str):
        self.plain, self.warmup, self.device = plain, warmup, device
        self.lightning, self.plain_seconds = [], []
        self.start = self.last_plain = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        now = clock(self.device)
        if batch_idx > self.warmup:
            self.lightning.append(tuple(n - s - q for n, s, q in zip(now, self.start, self.last_plain)))
            self.plain_seconds.append(self.last_plain)
        self.start = now

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        start = clock(self.device)
        self.plain.step(batch)
        self.last_plain = elapsed(start, self.device)


def compare(geometry: ModelGeometry, p: TrainParams, batch_size: int, device: str, warmup: int, steps: int) -> dict:
    """`steps` interleaved pairs of steps through the stage's Trainer (its logger and progress bar in,
    checkpoints out); per pair the ratio of steps/s, then medians, by wall and by process CPU time."""
    batch = synthetic_batch(geometry, batch_size, device)
    torch.manual_seed(0)
    module, interleaved = HandDiffusionModule(p, geometry), Interleaved(PlainLoop(geometry, p, device), warmup, device)
    with tempfile.TemporaryDirectory() as logs:
        options = dict(trainer_options(p), max_steps=warmup + steps + 1)
        logger = LiveLogger(dir=logs, save_dvc_exp=False, dvcyaml=False, report=None)
        trainer = L.Trainer(**options, logger=logger, callbacks=[interleaved], enable_checkpointing=False)
        trainer.fit(module, loader(batch, warmup + steps + 1))
    lightning, plain = interleaved.lightning, interleaved.plain_seconds
    wall, cpu = ([b[i] / a[i] for a, b in zip(lightning, plain)] for i in (0, 1))
    for i, (a, b) in enumerate(zip(lightning, plain)):
        print(f"  step {i}: lightning {a[0]:.3f} s, plain {b[0]:.3f} s, ratio {wall[i]:.3f} (CPU time {cpu[i]:.3f})")
    return dict(ratio=round(statistics.median(wall), 4), ratio_per_step=[round(r, 4) for r in wall],
                cpu_time_ratio=round(statistics.median(cpu), 4),
                lightning_steps_per_s=round(1 / statistics.median(t[0] for t in lightning), 3),
                plain_steps_per_s=round(1 / statistics.median(t[0] for t in plain), 3),
                batch_size=batch_size, steps=steps, warmup_steps=warmup)


def flops_per_step(geometry: ModelGeometry, p: TrainParams, batch: dict, device: str) -> int:
    """FLOPs of one forward + backward of the training loss, as torch.utils.flop_counter counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    module = HandDiffusionModule(p, geometry).to(device).train()
    generator = torch.Generator(device=device).manual_seed(0)
    with FlopCounterMode(display=False) as counter, torch.autocast(device, torch.bfloat16, enabled=device == "cuda"):
        module.losses(batch, drop=True, generator=generator)["loss"].backward()
    return counter.get_total_flops()


def peak_flops(name: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def cpu_benchmark(args) -> dict:
    load = os.getloadavg()[0]  # the neighbours: per-step ratios swing with it
    p = load_params(ROOT / "params.yaml").train.model_copy(update=dict(accelerator="cpu", devices=1, strategy="auto"))
    geometry = model_geometry(p)
    print(f"CPU, {torch.get_num_threads()} threads: the stage's default model at {p.resolution} px, "
          f"batch {p.batch_size}, {args.steps} interleaved step pairs", flush=True)
    result = compare(geometry, p, p.batch_size, "cpu", args.warmup, args.steps)
    print(f"train_step ratio (Lightning / plain steps/s): {result['ratio']:.3f}, by CPU time "
          f"{result['cpu_time_ratio']:.3f}  (goal ≥ 0.95)")
    return dict(result, device="cpu", threads=torch.get_num_threads(), resolution=p.resolution,
                model=p.model.model_dump(), conditioning=p.conditioning, command="python benchmarks/train_step.py",
                load_average_at_start=round(load, 2))


def gpu_benchmark(args) -> dict:
    if not torch.cuda.is_available():
        sys.exit("--gpu: no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name()
    peak = peak_flops(name, args.peak_tflops)
    geometry = ModelGeometry(input_size=32, image_channels=4, cond_channels=CHANNELS["heatmaps42"], repa_dim=None)
    result = dict(device=name, peak_bf16_tflops=peak and peak / 1e12)
    for model, batch_size in GPU_MODELS.items():
        batch_size = args.batch_size or batch_size
        p = TrainParams(accelerator="gpu", precision="bf16-mixed", log_every_n_steps=10,
                        model=dict(dit_size(model), mask_head=False))
        flops = flops_per_step(geometry, p, synthetic_batch(geometry, batch_size, "cuda"), "cuda")
        print(f"{name}: {model}, batch {batch_size}: {flops / 1e12:.2f} TFLOP per step", flush=True)
        timing = compare(geometry, p, batch_size, "cuda", args.warmup, args.steps)
        for loop in ("lightning", "plain"):
            achieved = flops * timing[f"{loop}_steps_per_s"]
            timing[f"{loop}_tflops"] = round(achieved / 1e12, 1)
            timing[f"{loop}_mfu"] = round(achieved / peak, 4) if peak else None
        print(f"  {model}: MFU Lightning {timing['lightning_mfu']}, plain {timing['plain_mfu']} (goal ≥ 0.35)")
        result[model] = dict(timing, flops_per_step=flops)
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu", action="store_true", help="MFU of DiT-B/2 and DiT-XL/2 in bf16 on the GPU")
    parser.add_argument("--steps", type=int, default=20, help="timed pairs of steps (one of each loop)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--batch-size", type=int, default=None, help="--gpu: override the per-model batch")
    parser.add_argument("--peak-tflops", type=float, default=None, help="--gpu: the card's dense bf16 peak")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gpu:
        record("train_step_gpu", gpu_benchmark(args))
    else:
        record("train_step", cpu_benchmark(args))


if __name__ == "__main__":
    main()
