"""params.yaml validation: bad keys stop a stage before any work, naming the full key path."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from handloom.params import ParamsError, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def test_repository_params_validate_and_match_defaults():
    params = load_params(ROOT / "params.yaml")
    assert params.train.model.depth == 4
    assert params.ingest.synthetic.n_cameras == 3


@pytest.mark.parametrize("patch, message", [
    ({"train": {"model": {"depth": 0}}}, "train.model.depth: must be ≥ 1"),
    ({"train": {"modle": {}}}, "train.modle: unknown key"),
    ({"shard": {"max_samples": "many"}}, "shard.max_samples: input should be a valid integer"),
    ({"train": {"conditioning": "heatmaps43"}}, "train.conditioning: must be one of"),
    ({"ingest": {"synthetic": {"two_hand_prob": 1.5}}}, "ingest.synthetic.two_hand_prob: must be ≤ 1"),
    ({"ingest": {"freihandd": {}}}, "ingest.freihandd: unknown key"),
])
def test_bad_params_name_the_key_path(patch, message):
    with pytest.raises(ParamsError) as e:
        parse_params(patch)
    assert message in str(e.value)


def test_every_error_is_listed_at_once():
    with pytest.raises(ParamsError) as e:
        parse_params({"train": {"lr": -1, "batch_size": 0}})
    assert "train.lr: must be > 0" in str(e.value) and "train.batch_size: must be ≥ 1" in str(e.value)


def test_non_mapping_yaml_is_a_clear_error(tmp_path):
    (tmp_path / "params.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ParamsError, match="top level must be a mapping"):
        load_params(tmp_path / "params.yaml")


def test_stage_exits_nonzero_before_any_work(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ingest"]["synthetic"]["n_frames"] = "six"
    params["train"]["model"]["depth"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run = subprocess.run([sys.executable, str(ROOT / "stages/ingest.py"), "synthetic"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert "ingest.synthetic.n_frames: input should be a valid integer" in run.stderr
    assert "train.model.depth: must be ≥ 1" in run.stderr
    assert not (tmp_path / "data").exists()
