"""Memory and time on paper for the GPU presets, from measurements on the CPU: what a GPU run will confirm or correct.

For DiT-B/2 and DiT-XL/2 at 256 px (32 x 32 x 4 SD-VAE latents, heatmaps42 + mask, reference + target = 512 tokens),
built by the training module from the presets' own TrainParams:
- parameters: counted on the built DiT;
- activation bytes per sample: the tensors autograd saves for backward under bf16 autocast (saved_tensors_hooks,
  each storage counted once), at batch 1 and 2: the difference is per sample, the rest (autocast's bf16 weight
  copies) is per step;
- FLOPs per pair: torch.utils.flop_counter on one forward + backward of the training loss (attention through SDPA's
  math kernel, which the counter sees; the CPU's fused kernel is invisible to it).
Blocks are identical, so each figure is linear in depth: measured at depth 1 and 2 and extended to the table's depth,
and checked against a full-depth measurement of B/2 (`--check-full`).

From them: the largest batch per 80 GB GPU (fp32 weights + grads + AdamW's two moments + EMA = 20 B per parameter,
the bf16 copies, 3 GB for the CUDA context and workspaces, 10 % allocator slack), steps/s at 35 % MFU on an H100 SXM
(989 dense bf16 TFLOP/s) at the preset's batch, and hours for the preset's schedule on 1 and 8 H100s.
Writes benchmarks/results.json "gpu_plan" and prints the README table.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from handloom.model.vae import SD_VAE_CONFIG, geometry_from_config
from handloom.orchestrate.presets import preset_params
from handloom.schema import FLAG
from handloom.shards.conditioning import CHANNELS
from handloom.train.module import HandDiffusionModule, ModelGeometry
from record import record

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {"DiT-B/2": "gpu-b2-256", "DiT-XL/2": "gpu-xl2-256"}
H100_BF16 = 989e12   # dense bf16 FLOP/s of an H100 SXM (NVIDIA data sheet, no sparsity)
MFU = 0.35           # the project's goal (DESIGN.md)
GPU_BYTES = 80e9
CONTEXT_BYTES = 3e9  # CUDA context, cuBLAS/cuDNN/NCCL workspaces
SLACK = 0.9          # allocator fragmentation
STATE_BYTES_PER_PARAM = 4 + 4 + 8 + 4  # fp32 weights, grads, AdamW exp_avg + exp_avg_sq, EMA


def geometry_of(p) -> ModelGeometry:
    vae = geometry_from_config(SD_VAE_CONFIG)
    return ModelGeometry(vae.latent_size(p.resolution), vae.channels, CHANNELS[p.conditioning], None)


def batch_of(geometry: ModelGeometry, n: int) -> dict:
    g = torch.Generator().manual_seed(0)
    s = geometry.input_size

    def uniform(c):
        return torch.rand(n, c, s, s, generator=g) * 2 - 1

    return dict(reference=uniform(geometry.image_channels), target=uniform(geometry.image_channels),
                reference_cond=uniform(geometry.cond_channels).clamp(min=0),
                target_cond=uniform(geometry.cond_channels).clamp(min=0),
                target_mask=(uniform(1) > 0).float(), flag=torch.full((n,), FLAG["pose"]))


def saved_bytes(module: HandDiffusionModule, batch: dict) -> int:
    """Bytes autograd keeps for backward in one bf16-autocast training loss, each storage once."""
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    generator = torch.Generator().manual_seed(0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", torch.bfloat16):
        loss = module.losses(batch, drop=True, generator=generator)["loss"]
    del loss
    return sum(seen.values())


def flops(module: HandDiffusionModule, batch: dict) -> int:
    generator = torch.Generator().manual_seed(0)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        module.losses(batch, drop=True, generator=generator)["loss"].backward()
    return counter.get_total_flops()


def measure(p, geometry: ModelGeometry, depth: int) -> dict:
    p = p.model_copy(update=dict(model=p.model.model_copy(update=dict(depth=depth))))
    torch.manual_seed(0)
    module = HandDiffusionModule(p, geometry).train()
    one, two = (saved_bytes(module, batch_of(geometry, n)) for n in (1, 2))
    return dict(params=sum(t.numel() for t in module.model.parameters()), activation_bytes_per_sample=two - one,
                per_step_saved_bytes=2 * one - two, flops_per_pair=flops(module, batch_of(geometry, 1)))


def extend(at1: dict, at2: dict, depth: int) -> dict:
    """Each figure at `depth` from its values at depth 1 and 2 (blocks are identical: linear in depth)."""
    return {k: at1[k] + (depth - 1) * (at2[k] - at1[k]) for k in at1}


def plan(model: str, check_full: bool) -> dict:
    p = preset_params(PRESETS[model], ROOT / "params.yaml").train
    geometry = geometry_of(p)
    start = time.perf_counter()
    figures = extend(measure(p, geometry, 1), measure(p, geometry, 2), p.model.depth)
    if check_full:
        full = measure(p, geometry, p.model.depth)
        figures["full_depth_check"] = {k: round(figures[k] / full[k], 4) for k in full}  # extended / measured
    n = figures["params"]
    static = n * STATE_BYTES_PER_PARAM + figures["per_step_saved_bytes"] + CONTEXT_BYTES
    largest = int((GPU_BYTES * SLACK - static) // figures["activation_bytes_per_sample"])
    pairs_per_s = MFU * H100_BF16 / figures["flops_per_pair"]
    global_batch = p.batch_size * p.devices
    hours_1 = p.max_steps * global_batch / pairs_per_s / 3600
    tokens = 2 * (geometry.input_size // p.model.patch_size) ** 2  # reference + target
    return dict(figures, preset=PRESETS[model], depth=p.model.depth, tokens=tokens,
                static_gb=round(static / 1e9, 1), largest_batch_per_80gb=largest,
                preset_batch_per_gpu=p.batch_size, preset_devices=p.devices, preset_max_steps=p.max_steps,
                pairs_per_s_at_35_mfu=round(pairs_per_s, 1),
                steps_per_s_at_35_mfu=round(pairs_per_s / p.batch_size, 3),
                hours_1_h100=round(hours_1, 1), hours_8_h100=round(hours_1 / 8, 1),
                measured_s=round(time.perf_counter() - start, 1))


def table(results: dict) -> str:
    rows = ["| | DiT-B/2 | DiT-XL/2 |", "|---|---|---|"]
    fields = [("parameters (M)", lambda r: f"{r['params'] / 1e6:.1f}"),
              ("weights + grads + AdamW + EMA (GB, 20 B/param)", lambda r: f"{r['params'] * 20 / 1e9:.1f}"),
              ("activations per pair, bf16 (MB)", lambda r: f"{r['activation_bytes_per_sample'] / 1e6:.0f}"),
              ("FLOPs per pair, fwd + bwd (GFLOP)", lambda r: f"{r['flops_per_pair'] / 1e9:.0f}"),
              ("largest batch per 80 GB GPU", lambda r: f"{r['largest_batch_per_80gb']}"),
              ("preset: batch per GPU x GPUs, steps", lambda r: f"{r['preset_batch_per_gpu']} x {r['preset_devices']}, "
               f"{r['preset_max_steps']:,}"),
              ("pairs/s per H100 at 35 % MFU", lambda r: f"{r['pairs_per_s_at_35_mfu']}"),
              ("steps/s per H100 at the preset's batch", lambda r: f"{r['steps_per_s_at_35_mfu']}"),
              ("hours for the preset's schedule, 1 H100", lambda r: f"{r['hours_1_h100']:,}"),
              ("hours for the preset's schedule, 8 H100s", lambda r: f"{r['hours_8_h100']:,}")]
    for name, cell in fields:
        rows.append(f"| {name} | {cell(results['DiT-B/2'])} | {cell(results['DiT-XL/2'])} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check-full", action="store_true", help="also measure B/2 at full depth (~2 min more)")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    results = {model: plan(model, args.check_full and model == "DiT-B/2") for model in PRESETS}
    print(table(results))
    record("gpu_plan", dict(results, command="python benchmarks/gpu_plan.py" + (" --check-full" * args.check_full),
                            threads=torch.get_num_threads()))


if __name__ == "__main__":
    main()
