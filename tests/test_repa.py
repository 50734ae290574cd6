"""REPA from a local path: a tiny random Dinov2Model directory or a TorchScript file, through the train stage."""
import pytest
import torch
import torch.nn as nn
from transformers import Dinov2Config, Dinov2Model

from handloom.model.repa import load_repa_encoder
from handloom.params import TrainParams
from handloom.train.fit import CHECKPOINT, fit, load_module
from train_project import TINY_TRAIN, toy_shards

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dinov2_path(tmp_path_factory):
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48,
                          patch_size=4, image_size=16)
    path = tmp_path_factory.mktemp("dinov2")
    Dinov2Model(config).save_pretrained(path)
    return path


class Patches(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 12, 8, 8)

    def forward(self, images):
        return self.proj(images).flatten(2).transpose(1, 2)  # (N, T, 12)


def test_dinov2_directory_gives_patch_tokens_on_the_dit_grid(dinov2_path):
    encoder = load_repa_encoder(dinov2_path, resolution=16, grid=4)
    features = encoder(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert encoder.embed_dim == 24 and features.shape == (2, 16, 24)  # 4x4 patches, CLS dropped
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    assert load_repa_encoder(dinov2_path, resolution=64, grid=2)(torch.zeros(1, 3, 64, 64)).shape == (1, 4, 24)


def test_torchscript_file_is_probed_for_its_width(tmp_path):
    torch.jit.save(torch.jit.script(Patches()), tmp_path / "encoder.pt")
    encoder = load_repa_encoder(tmp_path / "encoder.pt", resolution=16, grid=4)
    assert encoder.embed_dim == 12 and encoder(torch.zeros(2, 3, 16, 16)).shape == (2, 4, 12)
    assert load_repa_encoder(None, 16, 4) is None


def test_train_stage_adds_the_repa_loss_and_keeps_the_encoder_out(toy_dataset, dinov2_path):
    shards, models, logs = toy_shards(toy_dataset), toy_dataset / "models", toy_dataset / "logs"
    p = TrainParams(**TINY_TRAIN, max_steps=2, repa_encoder_path=str(dinov2_path), repa_weight=0.7)
    fit(p, shards, models, logs)
    assert (logs / "plots" / "metrics" / "train" / "repa_loss.tsv").exists()
    state = torch.load(models / CHECKPOINT, weights_only=True)
    assert state["hyper_parameters"]["geometry"]["repa_dim"] == 24
    assert state["hyper_parameters"]["train"]["repa_weight"] == 0.7
    assert not any(k.startswith("repa_encoder.") for k in state["state_dict"])
    assert load_module(models).model.repa_projector is not None  # loads for sampling without the encoder
    # Turning REPA off is another model: the stage starts afresh rather than resuming.
    fit(TrainParams(**TINY_TRAIN, max_steps=1), shards, models, logs)
    assert torch.load(models / CHECKPOINT, weights_only=True)["global_step"] == 1
