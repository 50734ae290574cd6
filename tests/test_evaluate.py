"""The evaluate stage's bookkeeping: pairs grouped by kind and dataset, LPIPS and FID/KID wired in, strict metrics.json,
and the report's tables of it."""
import json

import pyarrow as pa
import pytest
import torch
from torch import nn

from handloom import schema
from handloom.evaluate.metrics import LPIPS, lpips
from handloom.evaluate.pipeline import choose_pairs, distribution_metrics, image_metrics, per_group
from handloom.io import write_json, write_table
from handloom.report.build import metrics_section

PAIRS = [  # (reference, target, kind); the dataset is the target key's first part
    ("synthetic/val/s0/0-0", "synthetic/val/s0/1-0", "pose"),
    ("synthetic/val/s0/0-0", "synthetic/val/s0/0-1", "view"),
    ("freihand/val/f7/0-0", "freihand/val/f7/0-0", "self"),
    ("rhd/val/r1/0-0", "rhd/val/r1/0-0", "self"),
    ("synthetic/train/s9/0-0", "synthetic/train/s9/1-0", "pose"),  # not held out: never chosen
]


def write_pairs(shards_dir):
    rows = [dict(split=schema.SampleKey.parse(t).split, reference=r, target=t, kind=k) for r, t, k in PAIRS]
    write_table(shards_dir / schema.PAIRS_FILE, pa.Table.from_pylist(rows, schema=schema.PAIRS))


def test_pairs_carry_their_dataset_and_group_by_any_column(tmp_path):
    write_pairs(tmp_path)
    pairs = choose_pairs(tmp_path, n=10, seed=0)
    assert sorted(zip(pairs.target, pairs.dataset)) == [
        ("freihand/val/f7/0-0", "freihand"), ("rhd/val/r1/0-0", "rhd"),
        ("synthetic/val/s0/0-1", "synthetic"), ("synthetic/val/s0/1-0", "synthetic")]

    def targets(rows):
        return sorted(pairs.target[rows])
    assert per_group(pairs, "dataset", targets) == {
        "freihand": ["freihand/val/f7/0-0"], "rhd": ["rhd/val/r1/0-0"],
        "synthetic": ["synthetic/val/s0/0-1", "synthetic/val/s0/1-0"]}
    assert per_group(pairs, "kind", targets) == {
        "pose": ["synthetic/val/s0/1-0"], "self": ["freihand/val/f7/0-0", "rhd/val/r1/0-0"],
        "view": ["synthetic/val/s0/0-1"]}


class Pixels(nn.Module):
    def forward(self, x):
        return [x]


def test_image_metrics_add_lpips_only_with_a_perceptual_model():
    a = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    b = a.flip(0)
    assert set(image_metrics(a, b)) == {"psnr", "ssim"}
    perceptual = LPIPS(Pixels(), [torch.tensor([1.0, 0.5, 2.0])])
    scores = image_metrics(a, b, perceptual)
    assert scores["lpips"] == pytest.approx(lpips(perceptual, a, b).mean().item()) and scores["lpips"] > 0
    assert image_metrics(a, a, perceptual)["lpips"] == 0.0


def test_metrics_json_is_strict_with_null_for_missing_values(tmp_path):
    write_json(tmp_path / "metrics.json", {"hands": {"mpjpe": float("nan"), "pck_0_2": 0.5}, "psnr": float("inf"),
                                           "curve": [1.0, float("-inf")]})
    text = (tmp_path / "metrics.json").read_text()

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")
    assert json.loads(text, parse_constant=refuse) == {"hands": {"mpjpe": None, "pck_0_2": 0.5}, "psnr": None,
                                                        "curve": [1.0, None]}


def block(psnr: float, mpjpe: float | None) -> dict:
    hands = dict(detection_rate=0.5, detection_confidence=0.9, pck_0_2=0.75, mpjpe=mpjpe, joint_ratio_difference=0.1)
    return dict(psnr=psnr, ssim=0.2, untrained=dict(psnr=5.0, ssim=0.01, hands=dict(detection_rate=0.0)), hands=hands)


def test_report_tables_per_kind_and_per_dataset_show_a_dash_for_null():
    m = dict(block(10.0, None), per_kind={"view": block(11.0, 2.5), "pose": block(9.0, None)},
             per_dataset={"synthetic": block(10.5, 3.0), "freihand": block(8.0, None)})
    text = "\n".join(metrics_section(m))
    assert "| all | 10 | 5 | 0.2 | 0.01 | 0.5 | 0 | 0.9 | 0.75 | – | 0.1 |" in text
    assert text.index("| pose | 9 |") < text.index("| view | 11 |")
    assert "| dataset | psnr |" in text
    assert "| freihand | 8 | 5 | 0.2 | 0.01 | 0.5 | 0 | 0.9 | 0.75 | – | 0.1 |" in text
    assert "| synthetic | 10.5 | 5 | 0.2 | 0.01 | 0.5 | 0 | 0.9 | 0.75 | 3 | 0.1 |" in text
    assert text.index("| freihand |") < text.index("| synthetic |") and "lpips" not in text
    assert "nan" not in text.lower()


def test_report_tables_gain_lpips_columns_when_measured():
    m = dict(block(10.0, 1.0), lpips=0.25, untrained=dict(psnr=5.0, ssim=0.01, lpips=0.75))
    text = "\n".join(metrics_section(m))
    assert "| pairs | psnr | psnr_untrained | ssim | ssim_untrained | lpips | lpips_untrained |" in text
    assert "| all | 10 | 5 | 0.2 | 0.01 | 0.25 | 0.75 |" in text
    assert "| 0.75 | 0.5 | – | 0.9 |" in text  # an older metrics.json without the untrained model's hands


def test_distribution_metrics_read_only_the_hand_pixels():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(12, 3, 8, 8, generator=g) * 2 - 1
    masks = torch.zeros(12, 1, 8, 8)
    masks[..., 2:6, 2:6] = 1
    extractor = nn.Flatten()  # the pixels themselves
    other_background = torch.where(masks.bool(), target, torch.rand(12, 3, 8, 8, generator=g) * 2 - 1)
    white_hands = torch.ones_like(target)
    same, other_hands = distribution_metrics(extractor, target, masks, other_background, white_hands)
    assert same["fid"] == pytest.approx(0.0, abs=1e-6)
    assert other_hands["fid"] > 0.01 and other_hands["kid_mean"] > 10 * abs(same["kid_mean"])


def test_report_shows_fid_and_kid_when_measured():
    m = dict(block(10.0, 1.0), fid=12.5, kid_mean=0.25, kid_std=0.01,
             untrained=dict(psnr=5.0, ssim=0.01, fid=80.0, kid_mean=0.9, kid_std=0.02))
    text = "\n".join(metrics_section(m))
    assert "| trained | 12.5 | 0.25 | 0.01 |" in text and "| untrained | 80 | 0.9 | 0.02 |" in text
    assert "FID" not in "\n".join(metrics_section(block(10.0, 1.0)))
