"""`handloom generate` end to end: the real console script, run in a subprocess, on a checkpoint trained here.

The pipeline's own checkpoint (data/models/last.ckpt) exists only after `dvc repro`, so a tiny one is trained
with the train stage's code (fit on toy shards, as tests/test_train_stage.py does); the CLI treats both alike.
"""
import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_TRAIN, tiny_checkpoint_in, toy_keypoints
from handloom import schema
from handloom.cli import main, sampling_options
from handloom.generate import NoHandError, generate, into_square, load_generator
from handloom.io import decode_image, encode_png
from handloom.params import EvaluateParams, TrainParams

HANDLOOM = Path(sys.executable).parent / "handloom"  # pyproject's console script


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint_in(tmp_path_factory.mktemp("generate"))


@pytest.fixture
def inputs(tmp_path) -> Path:
    """A non-square reference (centre-cropped by the CLI) with its keypoints, a pose target (.npy) and a
    view target (.json with its frame's size)."""
    rng = np.random.default_rng(0)
    (tmp_path / "reference.png").write_bytes(encode_png(rng.integers(0, 256, (56, 40, 3), np.uint8)))
    np.save(tmp_path / "reference.npy", toy_keypoints(rng, 40))
    np.save(tmp_path / "pose.npy", toy_keypoints(rng, 40))
    (tmp_path / "view.json").write_text(json.dumps({"keypoints": toy_keypoints(rng, 64).tolist(), "width": 64,
                                                    "height": 64}))
    return tmp_path


@pytest.fixture(autouse=True)
def no_project_params(tmp_path, monkeypatch):
    """Run where there is no params.yaml, so the CLI takes the params' defaults, as the subprocess does."""
    monkeypatch.chdir(tmp_path)


def handloom(*args, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([str(HANDLOOM), "generate", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finished(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


def read_png(path: Path) -> np.ndarray:
    return decode_image(path.read_bytes())


def test_cli_generates_both_modes_seeded(checkpoint, inputs):
    common = ["--checkpoint", str(checkpoint), "--steps", "3", "--size", "32"]
    pd.DataFrame(dict(reference=["reference.png"] * 4, reference_keypoints=["reference.npy"] * 4,
                      target=["pose.npy", "pose.npy", "view.json", "view.json"], mode=["pose", "pose", "view", "view"],
                      seed=[0, 1, 0, 0], output=["pose0.png", "pose1.png", "view0.png", "view0-again.png"])
                 ).to_parquet(inputs / "pairs.parquet")
    batch = handloom("--pairs", "pairs.parquet", "--out", "batch", *common, cwd=inputs)
    # Meanwhile, the single-pair path through the same entry point (the console script is sys.exit(main())).
    assert main(["generate", "--reference", str(inputs / "reference.png"), "--reference-keypoints",
                 str(inputs / "reference.npy"), "--target", str(inputs / "pose.npy"), "--mode", "pose", "--seed", "0",
                 "--out", str(inputs / "single.png"), *common]) == 0
    assert "generated 4 of 4" in finished(batch)
    images = {p.stem: read_png(p) for p in [inputs / "single.png", *(inputs / "batch").glob("*.png")]}
    assert len(images) == 5 and {im.shape for im in images.values()} == {(32, 32, 3)}
    assert np.array_equal(images["single"], images["pose0"])  # same seed, another process: the same image
    assert np.array_equal(images["view0"], images["view0-again"])
    assert not np.array_equal(images["pose0"], images["pose1"])  # another seed, another image


def test_mode_sets_the_flag_and_keypoints_follow_the_centre_crop(checkpoint, monkeypatch):
    model = load_generator(checkpoint, device="cpu")
    assert model.spec.resolution == 16 and model.spec.conditioning == "heatmaps42"
    seen = []
    sample = model.module.sample
    monkeypatch.setattr(model.module, "sample", lambda batch, *a, **k: seen.append(batch) or sample(batch, *a, **k))
    rng = np.random.default_rng(1)
    reference, keypoints = rng.integers(0, 256, (56, 40, 3), np.uint8), toy_keypoints(rng, 40)
    for mode in ("pose", "view"):
        image = generate(reference, keypoints, mode, model=model, reference_keypoints=keypoints, steps=2)
        assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    assert [int(b["flag"]) for b in seen] == [schema.FLAG["pose"], schema.FLAG["view"]]
    # A 40x56 frame's centred square starts 8 px down; absent rows stay zero.
    moved = into_square(keypoints, 40, 56)
    assert np.allclose(moved[:21, :2], keypoints[:21, :2] - [0, 8]) and not moved[21:].any()


def test_a_reference_without_a_hand_is_a_clear_error(checkpoint, inputs, capsys):
    model = load_generator(checkpoint, device="cpu")
    noise = inputs / "reference.png"
    with pytest.raises(NoHandError, match=f"no hand detected in the reference image {noise}"):
        generate(noise, np.load(inputs / "pose.npy"), model=model)
    code = main(["generate", "--checkpoint", str(checkpoint), "--reference", str(noise),
                 "--target", str(inputs / "pose.npy"), "--out", str(inputs / "out.png")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == f"error: no hand detected in the reference image {noise}"
    assert not (inputs / "out.png").exists()


def test_mediapipe_reads_the_reference_and_a_target_image(checkpoint, tmp_path):
    from handloom.datasets.synthetic import render_sequence

    frames = render_sequence(7, 100, n_frames=1, n_cameras=2, image_size=256)  # MediaPipe finds both (checked)
    for f in frames:
        (tmp_path / f"camera{f.camera}.png").write_bytes(encode_png(f.image))
    code = main(["generate", "--checkpoint", str(checkpoint), "--reference", str(tmp_path / "camera0.png"),
                 "--target", str(tmp_path / "camera1.png"), "--mode", "view", "--steps", "2",
                 "--out", str(tmp_path / "view.png")])
    assert code == 0 and read_png(tmp_path / "view.png").shape == (16, 16, 3)


def test_the_report_panel_draws_pose_and_view_pairs(checkpoint):
    from handloom.report.build import CELL, generate_examples_grid

    grid = generate_examples_grid(checkpoint.parent, checkpoint.parents[1] / "shards", TrainParams(**TINY_TRAIN),
                                  EvaluateParams(sample_steps=2), per_mode=1)
    assert grid.shape == (24 + 2 * CELL, 4 * CELL, 3)  # header, then a pose row and a view row


def test_cli_sampling_takes_the_flags_given_and_the_evaluate_settings_otherwise():
    evaluate = EvaluateParams(sample_steps=4, appearance_scale=1.5, pose_scale=2.5, eta=0.3)
    unset = dict(steps=None, appearance_scale=None, pose_scale=None, size=None)
    assert sampling_options(Namespace(**unset), evaluate) == dict(steps=4, appearance_scale=1.5, pose_scale=2.5,
                                                                  eta=0.3, size=None)
    flags = dict(unset, steps=9, pose_scale=0.0, size=32)  # a zero scale is a choice, not "unset"
    assert sampling_options(Namespace(**flags), evaluate) == dict(steps=9, appearance_scale=1.5, pose_scale=0.0,
                                                                  eta=0.3, size=32)
