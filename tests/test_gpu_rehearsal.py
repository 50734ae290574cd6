"""The gpu-xl2-256 preset's whole code path on the CPU, so the first GPU run finds nothing new but CUDA.

The stage scripts run as `dvc repro` runs them, in a project whose params.yaml is params.yaml + the preset (applied by
`presets --apply`), shrunk only where this machine forces it: DiT-XL/2's width, heads and patch but 2 of its
28 blocks (28 blocks with AdamW, EMA and a checkpoint are ~14 GB of RAM and 11 GB of disk), batch 1, 2 + 1 steps on one
CPU device, 2 evaluation pairs sampled in 2 DDIM steps. Everything else is the preset's: 256 px, Stable Diffusion's
VAE architecture (random weights: 4 latent channels, 8x down), heatmaps42 + mask on the 32 x 32 latent grid,
bf16-mixed (CPU autocast), EMA, constant lr, 2 DataLoader workers, latents cached by encode_latents.
"""
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from handloom.model.vae import save_random_autoencoder
from handloom.orchestrate.overrides import apply_overrides
from handloom.params import ShardParams, load_params
from handloom.shards.writer import write_shards
from train_project import ROOT

SHRUNK = {"train.model.depth": 2, "train.batch_size": 1, "train.max_steps": 2, "train.accelerator": "cpu",
          "train.devices": 1, "train.strategy": "auto", "train.num_workers": 2, "train.checkpoint_every_n_steps": 1,
          "train.sample_every_n_steps": 2, "train.sample_count": 1, "train.log_every_n_steps": 1,
          "evaluate.n_pairs": 2, "evaluate.sample_steps": 2}


def stage(project: Path, name: str, *args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1"}
    start = time.perf_counter()
    run = subprocess.run([sys.executable, str(ROOT / "stages" / f"{name}.py"), *args], cwd=project, env=env,
                         capture_output=True, text=True)
    print(f"{name}: {time.perf_counter() - start:.1f} s")
    assert run.returncode == 0, f"{name}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run.stdout + run.stderr


@pytest.mark.slow  # ~3 min on 2 busy cores: SD's VAE at 256 px and a 1152-wide DiT, all in CPU bf16
def test_gpu_xl2_256_rehearsal(toy_dataset, tmp_path):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    shutil.copytree(ROOT / "presets", project / "presets")
    preset = subprocess.run([sys.executable, "-m", "handloom.orchestrate.presets", "gpu-xl2-256", "--apply"],
                            cwd=project, capture_output=True, text=True)
    assert preset.returncode == 0, preset.stderr
    vae = save_random_autoencoder(tmp_path / "sd-vae")
    apply_overrides(project / "params.yaml", {**SHRUNK, "train.vae_path": str(vae)})
    p = load_params(project / "params.yaml")
    assert (p.train.model.hidden_size, p.train.model.num_heads, p.train.model.patch_size) == (1152, 16, 2)
    assert (p.train.resolution, p.train.precision, p.train.lr_schedule) == (256, "bf16-mixed", "constant")
    write_shards({"toy": (toy_dataset / "ingest" / "toy", toy_dataset / "annotations" / "toy")},
                 project / "data" / "shards", ShardParams(crop_size=256, max_samples=1))

    stage(project, "encode_latents")
    meta = json.loads((project / "data" / "latents" / "meta.json").read_text())
    assert meta["count"] == 5 and meta["resolution"] == 256

    first = stage(project, "train")
    assert "not resuming" not in first
    checkpoint = torch.load(project / "data" / "models" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2 and checkpoint["hyper_parameters"]["geometry"] == dict(
        input_size=32, image_channels=4, cond_channels=43, repa_dim=None)  # 256 px / 8, SD's 4 channels
    assert not any(k.startswith("autoencoder.") for k in checkpoint["state_dict"])
    grid = project / "reports" / "train" / "plots" / "images" / "samples" / "2.png"
    assert grid.exists()  # EMA samples decoded through the VAE, drawn with evaluate's sampler

    apply_overrides(project / "params.yaml", {"train.max_steps": 3})
    resumed = stage(project, "train")
    assert "train: steps 3-3 on cpu" in resumed, resumed[-3000:]  # resumed at its step 2, not from step 1
    assert torch.load(project / "data" / "models" / "last.ckpt", weights_only=True)["global_step"] == 3
    with open(project / "reports" / "train" / "plots" / "metrics" / "train" / "loss.tsv") as f:
        steps = [row["step"] for row in csv.DictReader(f, delimiter="\t")]
    assert steps == ["0", "1", "2"]  # the resumed run logs on, no step twice

    stage(project, "evaluate")
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert metrics["n_pairs"] == 2 and metrics["resolution"] == 256 and metrics["psnr"] > 0
    stage(project, "report")
    report = (project / "reports" / "report.md").read_text()
    assert "2 held-out reference → target pairs at 256 px" in report
    assert (project / "reports" / "figures" / "generated.png").exists()
