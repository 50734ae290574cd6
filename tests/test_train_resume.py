"""Exact resume: the batch stream seeks to any step, and a train stage killed with SIGKILL then rerun ends
bit-identical to an uninterrupted run (weights, EMA, optimizer, logged loss curve, sample grids)."""
import csv
import os
import shutil
import signal
import time
from itertools import islice

import pytest
import torch

from handloom.params import TrainParams
from handloom.shards.reader import ExampleSpec
from handloom.train.data import PairStream, batches_done
from handloom.train.fit import CHECKPOINT, fit
from handloom.train.live import rewind_live
from train_project import TINY_TRAIN, toy_shards, train_project, train_stage

torch.set_num_threads(1)


def batches(shards, start_batch: int, count: int, num_workers: int) -> list[dict]:
    spec = ExampleSpec(16, "fingers11", 1.5)
    stream = PairStream(shards, "train", spec, batch_size=3, seed=7, start_batch=start_batch)
    loader = torch.utils.data.DataLoader(stream, batch_size=3, num_workers=num_workers)
    return [b for b, _ in zip(loader, range(count))]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_batches_done_follow_the_round_robin():
    # Batches 0..6 from 3 workers: worker 0 made 0, 3, 6; worker 1 made 1, 4; worker 2 made 2, 5.
    assert [batches_done(7, w, 3) for w in range(3)] == [3, 2, 2]
    assert [batches_done(0, w, 3) for w in range(3)] == [0, 0, 0]
    assert batches_done(5, 0, 1) == 5


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_stream_starts_at_any_batch_as_if_never_stopped(toy_dataset, num_workers):
    # Train shards of 1 and 4 examples, batches of 3: batches straddle draws, and the resumed
    # loader's worker 0 must play the part of the worker that owned batch 5.
    shards = toy_shards(toy_dataset)
    straight = batches(shards, 0, 9, num_workers)
    resumed = batches(shards, 5, 4, num_workers)
    assert all(same(a, b) for a, b in zip(straight[5:], resumed, strict=True))
    assert not same(straight[0], straight[1])  # the examples do vary


def test_the_stream_reads_s3_as_it_reads_a_directory(toy_dataset, s3):
    shards = toy_shards(toy_dataset)
    shutil.copytree(shards, s3 / "shards")
    spec = ExampleSpec(16, "fingers11", 1.5)
    remote, local = (PairStream(root, "train", spec, batch_size=3, seed=7, start_batch=2)
                     for root in ("s3://bucket/shards", shards))
    assert all(same(a, b) for a, b in zip(islice(remote, 7), islice(local, 7), strict=True))


def test_rewind_drops_redone_and_torn_rows(tmp_path):
    tsv = tmp_path / "plots" / "metrics" / "train" / "loss.tsv"
    tsv.parent.mkdir(parents=True)
    tsv.write_text("timestamp\tstep\tloss\n1\t0\t0.9\n2\t1\t0.8\n3\t2\t0.7\n4\t3\t0.")
    rewind_live(tmp_path, 2)
    assert tsv.read_text() == "timestamp\tstep\tloss\n1\t0\t0.9\n2\t1\t0.8\n"


def test_fit_stopped_early_then_extended_matches_one_run(toy_dataset):
    # In-process and without a kill (the slow test below has one): the loader picks up at step 4. All
    # 7 steps are in the warmup, whose LR does not depend on max_steps, so stopping early changes nothing.
    shards = toy_shards(toy_dataset)
    runs = {name: (toy_dataset / name / "models", toy_dataset / name / "logs") for name in ("straight", "resumed")}
    train = dict(TINY_TRAIN, warmup_steps=10)
    fit(TrainParams(**train, max_steps=7), shards, *runs["straight"])
    fit(TrainParams(**train, max_steps=4), shards, *runs["resumed"])
    fit(TrainParams(**train, max_steps=7), shards, *runs["resumed"])
    a, b = (torch.load(models / CHECKPOINT, weights_only=True)["state_dict"] for models, _ in runs.values())
    assert all(torch.equal(a[k], b[k]) for k in a)
    curves = [(logs / "plots" / "metrics" / "train" / "loss.tsv").read_text() for _, logs in runs.values()]
    assert curves[0] == curves[1] and curves[0].count("\n") == 8  # header + steps 0..6


def logged(project) -> dict[str, list[tuple[str, str]]]:
    """Every DVCLive series as (step, value) rows; the timestamps are the one thing allowed to differ."""
    series = {}
    for tsv in sorted((project / "reports" / "train" / "plots" / "metrics").rglob("*.tsv")):
        rows = list(csv.DictReader(tsv.open(), delimiter="\t"))
        name = tsv.stem
        series[str(tsv.relative_to(project))] = [(r["step"], r[name]) for r in rows]
    return series


def wait_for_step(project, stage, step: int, timeout: float = 120) -> None:
    """Block until the stage has logged `step` (so it is past a checkpoint and mid-way to the next)."""
    loss = project / "reports" / "train" / "plots" / "metrics" / "train" / "loss.tsv"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert stage.poll() is None, stage.communicate()[0][-3000:]
        lines = loss.read_text().splitlines() if loss.exists() else []
        column = lines[0].split("\t").index("step") if lines else 0
        if any(int(r.split("\t")[column]) >= step for r in lines[1:-1]):  # the last line may be half-written
            return
        time.sleep(0.01)
    raise TimeoutError(f"step {step} never logged")


@pytest.mark.slow  # ~50 s on two busy cores: three stage processes, each importing torch and Lightning
def test_killed_stage_resumes_bit_exact(toy_dataset, tmp_path):
    shards = toy_shards(toy_dataset)
    train = dict(max_steps=120, checkpoint_every_n_steps=40, sample_every_n_steps=30)
    straight, killed = (train_project(tmp_path / name, shards, **train) for name in ("straight", "killed"))
    first = train_stage(straight)

    stage = train_stage(killed)
    wait_for_step(killed, stage, 50)  # past the checkpoint at 40, 10 steps to redo
    os.kill(stage.pid, signal.SIGKILL)
    stage.wait()
    checkpoint = torch.load(killed / "data" / "models" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] in (40, 80), "killed too late to test anything"
    assert first.wait() == 0, first.communicate()[0][-3000:]

    output = train_stage(killed).communicate()[0]
    step = checkpoint["global_step"]
    assert f"train: steps {step + 1}-120 on cpu" in output, output  # resumed from the checkpoint, not from step 1

    a, b = (torch.load(p / "data" / "models" / "last.ckpt", weights_only=True) for p in (straight, killed))
    assert a["global_step"] == b["global_step"] == 120
    assert a["state_dict"].keys() == b["state_dict"].keys() and any(k.startswith("ema.") for k in a["state_dict"])
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert torch.equal(a["generator_states"], b["generator_states"])
    moments = [(s["exp_avg"], s["exp_avg_sq"]) for s in a["optimizer_states"][0]["state"].values()]
    resumed_moments = [(s["exp_avg"], s["exp_avg_sq"]) for s in b["optimizer_states"][0]["state"].values()]
    assert all(torch.equal(x, y) for m, n in zip(moments, resumed_moments, strict=True) for x, y in zip(m, n))

    summaries = [(p / "reports" / "train" / "metrics.json").read_text() for p in (straight, killed)]
    assert summaries[0] == summaries[1]
    curve = logged(straight)
    assert len(curve["reports/train/plots/metrics/train/loss.tsv"]) == 120
    assert curve == logged(killed)
    samples = [p / "reports" / "train" / "plots" / "images" / "samples" for p in (straight, killed)]
    grids = sorted(p.name for p in samples[0].iterdir())
    assert grids == ["120.png", "30.png", "60.png", "90.png"]
    assert all((samples[0] / name).read_bytes() == (samples[1] / name).read_bytes() for name in grids)
