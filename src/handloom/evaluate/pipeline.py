"""The evaluate stage: generate targets for held-out pairs, score them against the real targets and a
same-seed untrained model, and read the hands back through MediaPipe."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import lightning as L
import numpy as np
import pandas as pd
import torch

from handloom import keypoint_metrics, schema
from handloom.annotate.keypoints import detect_all, make_detector
from handloom.evaluate import metrics
from handloom.io import atomic_path, read_table, remove_torn_writes
from handloom.logs import phase
from handloom.model.vae import load_autoencoder
from handloom.params import EvaluateParams, TrainParams
from handloom.shards.pairs import HOLD_OUT
from handloom.shards.reader import read_sample, to_example
from handloom.train.fit import example_spec, load_module, model_geometry
from handloom.train.module import HandDiffusionModule, to_uint8_image

SAMPLES_FILE = "samples.npz"
CONFIDENT = 0.9


class NoHeldOutPairs(ValueError):
    """Nothing to evaluate: a configuration the user must change, not a crash."""


HELD_OUT_SPLITS = ("val", "test", HOLD_OUT)  # each dataset is evaluated on the first of these it has


def choose_pairs(shards_dir: Path, n: int, seed: int) -> pd.DataFrame:
    """At most n held-out pairs, balanced over datasets and then over each dataset's pair kinds, drawn with a fixed
    seed, with the dataset of each pair. Each dataset uses its own val, else test, else its hashed hold-out
    (shards.pairs.held_out_sequences), and self pairs only where that split has no pose or view pairs."""
    pairs = read_table(shards_dir / schema.PAIRS_FILE).to_pandas()
    pairs = pairs.assign(dataset=[schema.SampleKey.parse(key).dataset for key in pairs.target])
    held_out = [held_out_pairs(rows) for _, rows in pairs.groupby("dataset", sort=True)]
    held_out = [rows for rows in held_out if len(rows)]
    chosen = []
    for rows in held_out:
        quota = max(1, n // len(held_out))  # unused quota is not handed on: the default's pairs stay as they were
        chosen += [g.sample(min(len(g), max(1, quota // rows.kind.nunique())), random_state=seed)
                   for _, g in rows.groupby("kind", sort=True)]
    columns = ["split", "reference", "target", "kind", "dataset"]
    return pd.concat(chosen).head(n).reset_index(drop=True) if chosen else pd.DataFrame(columns=columns)


def held_out_pairs(pairs: pd.DataFrame) -> pd.DataFrame:
    """One dataset's pairs in its first held-out split; its self pairs only where that split has no others."""
    split = next((s for s in HELD_OUT_SPLITS if (pairs.split == s).any()), None)
    pairs = pairs[pairs.split == split]
    partnered = pairs[pairs.kind != "self"]
    return partnered if len(partnered) else pairs


def pairs_used(pairs: pd.DataFrame) -> dict[str, dict]:
    """Per dataset: the split its pairs came from and how many of each kind (0 where it has none)."""
    return {dataset: dict(split=rows.split.iloc[0], **{k: int((rows.kind == k).sum()) for k in schema.PAIR_KINDS})
            for dataset, rows in pairs.groupby("dataset", sort=True)}


def per_group(pairs: pd.DataFrame, column: str, scores: Callable[[np.ndarray], dict]) -> dict[str, dict]:
    """{value: scores(row numbers of the pairs with that value)} for each value of a pairs column (kind, dataset)."""
    values = pairs[column].to_numpy()
    return {value: scores(np.flatnonzero(values == value)) for value in sorted(pairs[column].unique())}


def load_examples(shards_dir: Path, pairs: pd.DataFrame, p: TrainParams) -> tuple[dict, np.ndarray]:
    """A batch of examples for the pairs, and the targets' keypoints at the model's resolution."""
    index = read_table(shards_dir / schema.INDEX_FILE).to_pandas().set_index("key")

    def sample(key):
        row = index.loc[key]
        return read_sample(shards_dir, row.shard, int(row.offset))

    examples, keypoints = [], []
    for ref, tgt, kind in pairs[["reference", "target", "kind"]].itertuples(index=False):
        target = sample(tgt)
        examples.append(to_example(sample(ref), target, kind, example_spec(p), rng=None))
        keypoints.append(target["keypoints"] * np.float32([p.resolution / target["image"].shape[0]] * 2 + [1]))
    batch = {k: torch.stack([e[k] for e in examples]) for k in schema.BATCH_KEYS}
    return batch, np.stack(keypoints)


def hand_metrics(detected: np.ndarray, target_keypoints: np.ndarray) -> dict:
    """Detection and agreement of MediaPipe on generated hands against the target pose (Pelykh, seed 000)."""
    target_hands = np.stack([[schema.hand_present(k, h) for h in schema.HANDS] for k in target_keypoints])
    scores = detected[:, [0, schema.JOINTS_PER_HAND], 2]  # col 2 holds the hand's detection score
    found = (scores > 0) & target_hands
    return dict(
        detection_rate=keypoint_metrics.detection_rate(detected, target_keypoints),
        detection_confidence=float(scores[found].mean()) if found.any() else 0.0,
        confident_share=float((scores[target_hands] > CONFIDENT).mean()) if target_hands.any() else 0.0,
        mpjpe=keypoint_metrics.mpjpe(detected, target_keypoints),
        pck_0_2=keypoint_metrics.pck(detected, target_keypoints, 0.2),
        dap_0_2=keypoint_metrics.dap(detected, target_keypoints, 0.2),
        joint_ratio_difference=keypoint_metrics.joint_ratio_difference(detected, target_keypoints))


def image_metrics(generated: torch.Tensor, target: torch.Tensor, perceptual: metrics.LPIPS | None = None) -> dict:
    """PSNR and SSIM of images in [-1, 1], and LPIPS when a perceptual model is given."""
    scores = dict(psnr=float(metrics.psnr(generated, target, 2.0).mean()),
                  ssim=float(metrics.ssim(generated, target, 2.0).mean()))
    if perceptual is not None:
        scores["lpips"] = float(metrics.lpips(perceptual, generated, target).mean())
    return scores


def distribution_metrics(extractor: torch.nn.Module, target: torch.Tensor, masks: torch.Tensor,
                         *generated: torch.Tensor) -> list[dict]:
    """FID and KID of each generated set against the target, images in [-1, 1], on the target's hand pixels
    only (Pelykh); the target's features are extracted once for all sets."""
    def features(images: torch.Tensor):
        return metrics.extract_features(extractor, (images + 1) / 2, masks)

    real = features(target)
    return [metrics.fid_kid(real, features(images)) for images in generated]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    return np.stack([to_uint8_image(x) for x in images])


def round_floats(d):
    if isinstance(d, dict):
        return {k: round_floats(v) for k, v in d.items()}
    return round(d, 4) if isinstance(d, float) else d


def evaluate(models_dir: Path, shards_dir: Path, out_dir: Path, train_p: TrainParams, p: EvaluateParams) -> dict:
    pairs = choose_pairs(shards_dir, p.n_pairs, p.seed)
    if pairs.empty:
        raise NoHeldOutPairs(f"no held-out pairs in {shards_dir}: no dataset has a val or test split or two sequences")
    used = ", ".join(f"{d} {u['split']} {sum(u[k] for k in schema.PAIR_KINDS)}" for d, u in pairs_used(pairs).items())
    print(f"evaluate: {len(pairs)} held-out pairs ({used})", flush=True)
    batch, target_keypoints = load_examples(shards_dir, pairs, train_p)
    autoencoder = load_autoencoder(train_p.vae_path)  # a latent model samples latents; score decoded images
    trained = load_module(models_dir, autoencoder=autoencoder)
    L.seed_everything(train_p.seed)
    untrained = HandDiffusionModule(train_p, model_geometry(train_p), autoencoder=autoencoder).eval()
    generate = dict(p.sampling(), seed=p.seed)
    with phase("evaluate", f"sampling the trained model ({p.sample_steps} DDIM steps)"):
        generated = trained.sample(batch, **generate)
    with phase("evaluate", "sampling the untrained model"):
        baseline = untrained.sample(batch, **generate, use_ema=False)
    images = {"reference": batch["reference"], "target": batch["target"], "generated": generated, "untrained": baseline}
    pixels = {k: to_uint8(v) for k, v in images.items()}
    detected = {}
    with make_detector(0.1) as detector:
        for k in ("generated", "untrained", "target"):
            with phase("evaluate", f"MediaPipe on the {len(pixels[k])} {k} images"):
                detected[k] = detect_all(pixels[k], detector)
    perceptual = metrics.load_lpips(p.lpips_path) if p.lpips_path else None

    def scores(rows: np.ndarray) -> dict:
        return dict(image_metrics(generated[rows], batch["target"][rows], perceptual),
                    untrained=dict(image_metrics(baseline[rows], batch["target"][rows], perceptual),
                                   hands=hand_metrics(detected["untrained"][rows], target_keypoints[rows])),
                    hands=hand_metrics(detected["generated"][rows], target_keypoints[rows]),
                    hands_on_real_targets=hand_metrics(detected["target"][rows], target_keypoints[rows]))

    result = dict(n_pairs=len(pairs), pairs_used=pairs_used(pairs), resolution=train_p.resolution,
                  **scores(np.arange(len(pairs))),
                  per_kind=per_group(pairs, "kind", scores), per_dataset=per_group(pairs, "dataset", scores))
    if p.fid_extractor_path:  # over all pairs only: a distance between distributions needs many samples
        extractor = metrics.load_feature_extractor(p.fid_extractor_path)
        trained_scores, untrained_scores = distribution_metrics(extractor, batch["target"], batch["target_mask"],
                                                                generated, baseline)
        result.update(trained_scores)
        result["untrained"].update(untrained_scores)
    remove_torn_writes(out_dir)
    with atomic_path(out_dir / SAMPLES_FILE) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **pixels, target_keypoints=target_keypoints, generated_keypoints=detected["generated"],
                            keys=pairs.target.to_numpy(str), kinds=pairs.kind.to_numpy(str))
    return round_floats(result)
