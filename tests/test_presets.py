"""The GPU presets (presets/*.yaml): valid params, every value commented with its source, and the `dvc exp run -S`
flags `python -m handloom.orchestrate.presets` prints give exactly the params the preset describes, through DVC's own
override code."""
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from handloom.model.dit import dit_size
from handloom.orchestrate.presets import exp_run_command, preset_names, preset_params, read_preset
from handloom.params import ParamsError, load_params

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ["gpu-b2-256", "gpu-xl2-256"]


def test_presets_are_valid_params_of_the_papers_models():
    assert preset_names(ROOT) == PRESETS
    for name, model, devices in (("gpu-b2-256", "DiT-B/2", 1), ("gpu-xl2-256", "DiT-XL/2", 8)):
        p = preset_params(name, ROOT / "params.yaml").train
        assert {k: getattr(p.model, k) for k in dit_size(model)} == dit_size(model)
        assert (p.resolution, p.conditioning, p.precision, p.devices) == (256, "heatmaps42", "bf16-mixed", devices)
        assert p.vae_path and p.ema_decay == 0.9999 and (p.lr, p.lr_schedule) == (1e-4, "constant")


def test_every_preset_value_says_where_it_comes_from():
    for name in PRESETS:
        lines = (ROOT / "presets" / f"{name}.yaml").read_text().splitlines()
        leaves = [line for line in lines if ":" in line and not line.lstrip().startswith("#")
                  and not line.rstrip().endswith(":")]  # `train:` / `model:` open a section
        assert leaves and all("#" in line for line in leaves), [line for line in leaves if "#" not in line]


def test_a_key_params_yaml_lacks_is_refused(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "typo.yaml").write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ParamsError, match="train.learning_rate: no such key"):
        preset_params("typo", tmp_path / "params.yaml")
    with pytest.raises(ParamsError, match="unknown preset 'nope'"):
        read_preset("nope", tmp_path)


@pytest.mark.parametrize("name", PRESETS)
def test_dvc_exp_run_flags_give_the_preset(tmp_path, name):
    from dvc.utils.hydra import apply_overrides  # what `dvc exp run -S` runs on params.yaml

    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    args = shlex.split(exp_run_command(name, ROOT))
    assert args[:5] == ["dvc", "exp", "run", "-n", name]
    apply_overrides(params, [a for a in args[5:] if a != "-S"])
    assert load_params(params) == preset_params(name, ROOT / "params.yaml")


def test_apply_writes_the_preset_into_params_yaml_keeping_comments(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / "presets", tmp_path / "presets")
    run = subprocess.run([sys.executable, "-m", "handloom.orchestrate.presets", "gpu-xl2-256", "--apply"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert load_params(tmp_path / "params.yaml") == preset_params("gpu-xl2-256", ROOT / "params.yaml")
    text = (tmp_path / "params.yaml").read_text()
    assert "# Validated by src/handloom/params.py" in text and yaml.safe_load(text)["train"]["model"]["depth"] == 28
    bad = subprocess.run([sys.executable, "-m", "handloom.orchestrate.presets", "gpu-xl3"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown preset 'gpu-xl3'")
