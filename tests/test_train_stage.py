"""The train stage on real shards: a Lightning run, a checkpoint that loads with weights_only, exact resume."""
import torch

from handloom.params import ShardParams, TrainParams
from handloom.shards.writer import write_shards
from handloom.train.fit import CHECKPOINT, fit, load_module

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
    assert module.config.depth == 1 and not module.training


def test_changed_architecture_starts_fresh(toy_dataset):
    shards_dir, models, logs = shards(toy_dataset), toy_dataset / "models", toy_dataset / "logs"
    fit(TrainParams(max_steps=2, checkpoint_every_n_steps=1, **TINY), shards_dir, models, logs)
    wider = dict(TINY, model=dict(TINY["model"], hidden_size=64))
    fit(TrainParams(max_steps=3, checkpoint_every_n_steps=1, **wider), shards_dir, models, logs)
    state = torch.load(models / CHECKPOINT, weights_only=True)
    assert state["global_step"] == 3 and state["hyper_parameters"]["config"]["hidden_size"] == 64
    assert [p.name for p in models.iterdir()] == [CHECKPOINT]  # overwritten, no last-v1.ckpt beside it


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
