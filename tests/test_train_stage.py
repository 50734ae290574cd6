"""The train stage on real shards: a Lightning run, a checkpoint that loads with weights_only, exact resume."""
import re

import torch

from conftest import TOY_SPECS, write_toy_dataset
from handloom.params import ShardParams, TrainParams
from handloom.shards.writer import write_shards
from handloom.train.fit import CHECKPOINT, fit, load_module
from train_project import toy_shards, train_project, train_stage

TINY = dict(resolution=16, batch_size=2, warmup_steps=1, sample_every_n_steps=1000, log_every_n_steps=1,
            accelerator="cpu", model=dict(patch_size=4, hidden_size=32, depth=1, num_heads=2))


def shards(root):
    out = root / "shards"
    write_shards({"toy": (root / "ingest" / "toy", root / "annotations" / "toy")}, out, ShardParams(crop_size=64))
    return out


def test_fit_resumes_exactly_from_the_persisted_checkpoint(toy_dataset):
    shards_dir, models, logs = shards(toy_dataset), toy_dataset / "models", toy_dataset / "logs"
    fit(TrainParams(max_steps=3, **TINY), shards_dir, models, logs)
    first = torch.load(models / CHECKPOINT, weights_only=True)
    assert first["global_step"] == 3
    fit(TrainParams(max_steps=5, **TINY), shards_dir, models, logs)
    resumed = torch.load(models / CHECKPOINT, weights_only=True)
    assert resumed["global_step"] == 5
    assert (logs / "metrics.json").exists() and list((logs / "plots" / "metrics").rglob("loss.tsv"))
    module = load_module(models)
    assert module.params == TrainParams(max_steps=5, **TINY) and not module.training  # rebuilt from the checkpoint


def test_changed_architecture_starts_fresh(toy_dataset):
    shards_dir, models, logs = shards(toy_dataset), toy_dataset / "models", toy_dataset / "logs"
    fit(TrainParams(max_steps=2, checkpoint_every_n_steps=1, **TINY), shards_dir, models, logs)
    wider = dict(TINY, model=dict(TINY["model"], hidden_size=64))
    fit(TrainParams(max_steps=3, checkpoint_every_n_steps=1, **wider), shards_dir, models, logs)
    state = torch.load(models / CHECKPOINT, weights_only=True)
    assert state["global_step"] == 3 and state["hyper_parameters"]["train"]["model"]["hidden_size"] == 64
    assert [p.name for p in models.iterdir()] == [CHECKPOINT]  # overwritten, no last-v1.ckpt beside it


def test_changed_data_settings_start_fresh_changed_logistics_resume(toy_dataset, capsys):
    # A resumed run must be the run its params describe: other heatmaps are another model (TrainConfig never saw
    # heatmap_sigma or batch_size); logging, workers and hardware are not.
    shards_dir, models, logs = shards(toy_dataset), toy_dataset / "models", toy_dataset / "logs"
    fit(TrainParams(max_steps=2, **TINY), shards_dir, models, logs)
    fit(TrainParams(max_steps=3, heatmap_sigma=2.0, **TINY), shards_dir, models, logs)
    assert "['heatmap_sigma'] changed; starting from scratch" in capsys.readouterr().out
    fit(TrainParams(max_steps=4, heatmap_sigma=2.0, **dict(TINY, log_every_n_steps=2), num_workers=1), shards_dir,
        models, logs)
    assert "not resuming" not in capsys.readouterr().out
    assert torch.load(models / CHECKPOINT, weights_only=True)["global_step"] == 4


def test_checkpoint_bytes_do_not_depend_on_the_folder(toy_dataset, recwarn):
    """The same training in two clones writes the same last.ckpt (so the same DVC hash), and resumes quietly."""
    shards_dir, runs = shards(toy_dataset), [toy_dataset / "a", toy_dataset / "b" / "deeper"]
    for run in runs:
        fit(TrainParams(max_steps=2, **TINY), shards_dir, run / "models", run / "logs")
    first, second = ((run / "models" / CHECKPOINT).read_bytes() for run in runs)
    assert first == second
    callback = next(s for s in torch.load(runs[0] / "models" / CHECKPOINT, weights_only=True)["callbacks"].values()
                    if "dirpath" in s)
    assert callback["dirpath"] == "." and callback["last_model_path"] == CHECKPOINT
    fit(TrainParams(max_steps=3, **TINY), shards_dir, runs[0] / "models", runs[0] / "logs")
    assert torch.load(runs[0] / "models" / CHECKPOINT, weights_only=True)["global_step"] == 3
    assert not [w for w in recwarn if "dirpath has changed" in str(w.message)]


def said(capsys) -> list[str]:
    """What the stage said, less its progress lines."""
    return [line for line in capsys.readouterr().out.splitlines()
            if line.startswith("train:") and not line.startswith("train: step")]


def test_a_log_file_gets_a_line_per_logged_step_and_no_third_party_notices(toy_dataset):
    """The stage script with its output in a pipe (as CI and Prefect run it): no redrawn bar ("Epoch 0/-2 ... 6/6"
    once at the end), but a line every log_every_n_steps; none of Lightning's notices."""
    project = train_project(toy_dataset / "project", toy_shards(toy_dataset), max_steps=6, log_every_n_steps=2,
                            sample_every_n_steps=1000)
    out, _ = train_stage(project).communicate(timeout=600)
    lines = out.splitlines()
    assert lines[0] == "train: steps 1-6 on cpu, 1 process(es), precision 32-true", out
    assert [re.sub(r" loss \d+\.\d{4} \(\d+\.\d\d s/step\)$", "", line) for line in lines[1:]] == [
        "train: step 2/6", "train: step 4/6", "train: step 6/6"], out


def test_declared_outputs_exist_and_only_same_shards_with_steps_to_go_resume(toy_dataset, tmp_path, capsys):
    """max_steps below sample_every_n_steps and log_every_n_steps still writes the metrics, plots and images DVC
    declares; new shards, or no step to add, start afresh and say why in one line."""
    shards_dir, models, logs = shards(toy_dataset), toy_dataset / "models", toy_dataset / "logs"
    short = dict(TINY, log_every_n_steps=50)  # sample_every_n_steps 1000
    fit(TrainParams(max_steps=2, **short), shards_dir, models, logs)
    assert [p.name for p in (logs / "plots" / "images").rglob("*.png")] == ["2.png"]
    assert (logs / "metrics.json").exists() and list((logs / "plots" / "metrics").rglob("loss.tsv"))

    fit(TrainParams(max_steps=2, **short), shards_dir, models, logs)  # e.g. only log_every_n_steps changed
    assert said(capsys) == [f"train: not resuming {models / CHECKPOINT}: max_steps 2 is not above its step 2; "
                            "starting from scratch"]
    assert torch.load(models / CHECKPOINT, weights_only=True)["global_step"] == 2

    more = tmp_path / "more"  # the toy dataset and one more sequence: other shards
    write_toy_dataset(more, "toy", TOY_SPECS + [("train", "seqc", 0, "0"), ("train", "seqc", 1, "0")])
    new_shards = shards(more)
    fit(TrainParams(max_steps=3, **short), new_shards, models, logs)
    assert said(capsys) == [f"train: not resuming {models / CHECKPOINT}: the shards changed; starting from scratch"]
    fresh = tmp_path / "fresh"
    fit(TrainParams(max_steps=3, **short), new_shards, fresh / "models", fresh / "logs")
    trained, alone = (torch.load(m / CHECKPOINT, weights_only=True)["state_dict"] for m in (models, fresh / "models"))
    assert all(torch.equal(trained[k], alone[k]) for k in alone)  # the same as a run that never saw the old shards
