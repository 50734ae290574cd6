"""Latent space: a tiny random AutoencoderKL from a local directory, the latent cache, and training on it."""
import json
import subprocess
import sys

import pytest
import torch
from diffusers import AutoencoderKL

from handloom.model.vae import LatentGeometry, load_autoencoder, vae_geometry
from handloom.params import TrainParams
from handloom.shards.reader import image_tensor, iter_samples, read_sample
from handloom.train.fit import CHECKPOINT, example_spec, fit, load_module, model_geometry, train_loader
from handloom.train.latents import META_FILE, LatentCache, encode_latents, open_cache
from train_project import ROOT, TINY_TRAIN, toy_shards

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def vae_path(tmp_path_factory):
    """DESIGN.md's tiny VAE: two stages, so a 2x downscale, 4 latent channels; random weights, saved locally."""
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(path)
    return path


def latent_params(vae_path, **kwargs) -> TrainParams:
    return TrainParams(**{**TINY_TRAIN, "vae_path": str(vae_path), "max_steps": 2, **kwargs})


def test_adapter_scales_the_posterior_mean(vae_path):
    autoencoder = load_autoencoder(vae_path)
    assert vae_geometry(vae_path) == autoencoder.geometry == LatentGeometry(channels=4, downscale=2)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    latents = autoencoder.encode(images)
    expected = autoencoder.vae.encode(images).latent_dist.mean * autoencoder.vae.config.scaling_factor
    torch.testing.assert_close(latents, expected)
    assert torch.equal(latents, autoencoder.encode(images))  # deterministic: no sampling
    assert autoencoder.decode(latents).shape == images.shape
    assert not any(p.requires_grad for p in autoencoder.parameters())
    assert load_autoencoder(None) is None


def test_config_and_conditioning_live_on_the_latent_grid(vae_path):
    p = latent_params(vae_path, resolution=32)
    geometry, spec = model_geometry(p), example_spec(p)
    assert (geometry.input_size, geometry.image_channels, geometry.cond_channels) == (16, 4, 11)
    assert (spec.resolution, spec.cond_resolution) == (32, 16)  # pixels for the VAE, heatmaps for the DiT
    assert example_spec(TrainParams(**TINY_TRAIN)).cond_resolution is None  # pixel space unchanged
    with pytest.raises(ValueError, match="multiple of the VAE's downscale"):
        model_geometry(latent_params(vae_path, resolution=17))


def test_cache_holds_each_train_image_encoded_once(toy_dataset, vae_path):
    shards = toy_shards(toy_dataset)
    p = latent_params(vae_path)
    meta = encode_latents(shards, toy_dataset / "latents", p, batch_size=3)
    cache = open_cache(toy_dataset / "latents", p)
    assert meta["count"] == len(cache) == 5 and set(cache) >= {"toy/train/seqa/1-1", "toy/train/img7/0-0"}
    sample = next(iter_samples(shards, "toy-train-00001.tar", min_side=16))  # decoded as the loader does
    on_the_fly = load_autoencoder(vae_path).encode(image_tensor(sample["image"], 16)[None])[0]
    torch.testing.assert_close(torch.from_numpy(cache[sample["key"]]), on_the_fly, atol=1e-5, rtol=1e-5)
    # A cache for another resolution (or other weights) is not used; pixel space never looks for one.
    assert open_cache(toy_dataset / "latents", latent_params(vae_path, resolution=32)) is None
    assert open_cache(toy_dataset / "latents", TrainParams(**TINY_TRAIN)) is None
    assert isinstance(open_cache(toy_dataset / "latents", p), LatentCache)


def test_pixel_space_writes_only_meta(toy_dataset):
    out = toy_dataset / "latents"
    encode_latents(toy_shards(toy_dataset), out, TrainParams(**TINY_TRAIN))
    assert [p.name for p in out.iterdir()] == [META_FILE]
    assert json.loads((out / META_FILE).read_text()) == {"vae": None}


def test_stage_in_pixel_space_is_a_no_op_without_torch(tmp_path):
    # The default pipeline runs encode_latents too: it must cost a Python start, not a torch import.
    (tmp_path / "params.yaml").write_text("train: {vae_path: null}\n")
    code = f"import runpy, sys; runpy.run_path({str(ROOT / 'stages' / 'encode_latents.py')!r}, run_name='__main__'); " \
           "sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=False).returncode == 0
    assert json.loads((tmp_path / "data" / "latents" / META_FILE).read_text()) == {"vae": None}


def test_training_on_cached_latents_matches_encoding_on_the_fly(toy_dataset, vae_path):
    # A cached latent is of the image as it is, so a cache turns augmentation off; off here too, and
    # heatmaps42, whose rendering draws nothing, so both runs see the same examples.
    off = dict(gamma=(1, 1), p_flip=0, crop_scale=(1, 1))
    shards = toy_shards(toy_dataset)
    p = latent_params(vae_path, sample_every_n_steps=2, augment=off, conditioning="heatmaps42")
    encode_latents(shards, toy_dataset / "latents", p)
    batch = next(iter(train_loader(shards, p, latents=open_cache(toy_dataset / "latents", p))))
    assert batch["target_latent"].shape == (2, 4, 8, 8) and batch["target_cond"].shape == (2, 43, 8, 8)
    assert batch["target"].shape == (2, 3, 16, 16)  # pixels too, for REPA and the sample grids
    cached = fit(p, shards, toy_dataset / "cached", toy_dataset / "logs", latents_dir=toy_dataset / "latents")
    on_the_fly = fit(p, shards, toy_dataset / "fly", toy_dataset / "logs_fly")
    for a, b in zip(cached.model.parameters(), on_the_fly.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert (toy_dataset / "logs" / "plots" / "images" / "samples" / "2.png").exists()  # decoded grid
    state = torch.load(toy_dataset / "cached" / CHECKPOINT, weights_only=True)["state_dict"]
    assert not any(k.startswith("autoencoder.") for k in state)
    module = load_module(toy_dataset / "cached", autoencoder=load_autoencoder(vae_path))
    batch = next(iter(torch.utils.data.DataLoader([module_example(shards, p)], batch_size=1)))
    images = module.sample(batch, steps=2, appearance_scale=1.5, pose_scale=1.5, seed=0)
    assert images.shape == (1, 3, 16, 16)


def module_example(shards, p) -> dict:
    from handloom.shards.reader import to_example

    sample = read_sample(shards, "toy-train-00001.tar", 0)
    return to_example(sample, sample, "self", example_spec(p), rng=None)
