"""DDP on the CPU: two gloo processes train through the real train stage on uneven shards without hanging."""
import subprocess

import pytest
import torch

from handloom.io import read_table
from handloom.params import TrainParams
from handloom.train.fit import trainer_options
from train_project import toy_shards, train_project, train_stage


def test_trainer_settings_come_from_params():
    options = trainer_options(TrainParams(devices=2, strategy="ddp", accelerator="cpu", grad_clip=0.5))
    assert (options["devices"], options["strategy"], options["gradient_clip_val"]) == (2, "ddp", 0.5)
    assert options["precision"] == "32"  # "auto" is bf16-mixed only where a GPU supports it
    assert trainer_options(TrainParams(precision="bf16-mixed"))["precision"] == "bf16-mixed"


@pytest.mark.slow  # 25 s on two busy cores, 90 s on very busy ones: two processes importing torch and Lightning
def test_two_ranks_on_uneven_shards_finish(toy_dataset, tmp_path):
    shards = toy_shards(toy_dataset)
    sizes = read_table(shards / "index.parquet").to_pandas().query("split == 'train'").groupby("shard").size()
    assert sorted(sizes) == [1, 4]  # a rank that drew the small shard runs dry first in an epoch-based loader
    project = train_project(tmp_path / "ddp", shards, max_steps=6, checkpoint_every_n_steps=3, devices=2,
                            strategy="ddp", accelerator="cpu", sample_every_n_steps=3)
    stage = train_stage(project)
    try:
        output = stage.communicate(timeout=240)[0]
    except subprocess.TimeoutExpired:
        stage.kill()
        raise AssertionError("DDP hung: " + stage.communicate()[0][-3000:]) from None
    assert stage.returncode == 0, output[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in output
    checkpoint = torch.load(project / "data" / "models" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 6
    states = checkpoint["generator_states"]  # one noise/dropout stream per rank, both saved for resume
    assert states.shape[0] == 2 and not torch.equal(states[0], states[1])
    assert sorted(p.name for p in (project / "reports" / "train" / "plots" / "images" / "samples").iterdir()) \
        == ["3.png", "6.png"]  # rank 0 alone logs
