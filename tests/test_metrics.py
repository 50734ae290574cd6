"""Metrics checked against answers worked out by hand."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from handloom.evaluate.metrics import (Inception192, dap, extract_features, fid_kid, frechet_distance,
                                       joint_ratio_difference, kernel_inception_distance, load_feature_extractor,
                                       mask_iou, mpjpe, pck, psnr, ssim)
from handloom.schema import empty_keypoints, hand_rows

# A right hand with every palm bone (wrist -> index..little MCP) 50 px long and straight fingers
# whose phalanges are 20, 15 and 10 px: the index finger's three phalanges sum to 45 px.
WRIST = np.array([100.0, 200.0])
MCP_OFFSETS = [(-30, -40), (-14, -48), (14, -48), (30, -40)]  # all of length 50
THUMB = [(-40, -30), (-55, -38), (-68, -45), (-78, -50)]


def right_hand() -> np.ndarray:
    xy = [WRIST, *(WRIST + np.array(t) for t in THUMB)]
    for dx, dy in MCP_OFFSETS:
        mcp = WRIST + (dx, dy)
        xy += [mcp, mcp - (0, 20), mcp - (0, 35), mcp - (0, 45)]
    k = empty_keypoints()
    k[hand_rows("right"), :2], k[hand_rows("right"), 2] = xy, 1
    return k


def both_hands() -> np.ndarray:
    k = right_hand()
    k[hand_rows("left")] = k[hand_rows("right")] + (200, 0, 0)
    return k


# --- Images ------------------------------------------------------------------------------------------
def test_identical_images_give_infinite_psnr_and_unit_ssim():
    a = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.isinf(psnr(a, a.clone(), 1.0)).all()
    torch.testing.assert_close(ssim(a, a.clone(), 1.0), torch.ones(3, dtype=torch.float64))


def test_constant_offset_gives_exact_psnr():
    a = torch.full((2, 3, 16, 16), 0.25)
    assert psnr(a, a + 0.1, data_range=1.0) == pytest.approx(torch.full((2,), 20.0), abs=1e-5)  # 10 log10(1 / 0.01)
    assert psnr(a * 2 - 1, (a + 0.1) * 2 - 1, data_range=2.0) == pytest.approx(torch.full((2,), 20.0), abs=1e-5)


def test_ssim_of_constant_images_is_the_luminance_term():
    # Constant images have no variance, so SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1), C1 = (0.01 L)^2.
    a, b = torch.full((1, 1, 24, 24), 0.2), torch.full((1, 1, 24, 24), 0.6)
    c1 = 0.01**2
    assert ssim(a, b, 1.0).item() == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1), rel=1e-6)


def test_ssim_falls_with_noise():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(1, 3, 32, 32, generator=g)
    noise = torch.randn(1, 3, 32, 32, generator=g)
    assert 1 > ssim(a, a + 0.05 * noise, 1.0).item() > ssim(a, a + 0.2 * noise, 1.0).item()


# --- Keypoints ---------------------------------------------------------------------------------------
def shifted(k: np.ndarray, dx: float, dy: float) -> np.ndarray:
    out = k.copy()
    out[out[:, 2] > 0, :2] += (dx, dy)
    return out


def test_mpjpe_of_a_3_4_shift_is_exactly_5_over_joints_seen_in_both():
    gt = both_hands()
    pred = shifted(gt, 3, 4)
    pred[5, :2] += 1000  # wildly off, but the ground truth does not see it:
    gt[5, 2] = 0
    pred[30, 2] = 0      # and one the prediction missed
    assert mpjpe(pred, gt) == 5.0
    assert mpjpe(np.stack([pred, pred]), np.stack([gt, gt])) == 5.0
    assert math.isnan(mpjpe(empty_keypoints(), gt))


def test_pck_uses_the_ground_truth_hand_box():
    gt = both_hands()
    size = max(np.ptp(gt[hand_rows("right"), 0]), np.ptp(gt[hand_rows("right"), 1]))  # 108 px wide
    pred = shifted(gt, 3, 4)
    assert pck(pred, gt, threshold=5.01 / size) == 1.0
    assert pck(pred, gt, threshold=4.99 / size) == 0.0


def test_dap_counts_an_undetected_hand_as_failure_where_pck_ignores_it():
    gt = both_hands()
    pred = gt.copy()
    pred[hand_rows("left")] = 0  # the detector found only the right hand
    assert pck(pred, gt, 0.1) == 1.0
    assert dap(pred, gt, 0.1) == 0.5
    assert dap(gt, gt, 0.1) == 1.0


def test_joint_ratio_difference_of_a_stretched_finger():
    gt = right_hand()
    pred = gt.copy()
    mcp = gt[5, :2]
    pred[6:9, :2] = mcp + 1.5 * (gt[6:9, :2] - mcp)  # index phalanges 20, 15, 10 -> x1.5
    # Palm stays 50 px; the three phalanx ratios grow by 0.5 * (20, 15, 10) / 50, averaged over 20 bones.
    assert joint_ratio_difference(pred, gt) == pytest.approx(0.5 * 45 / 50 / 20)
    assert joint_ratio_difference(gt, gt) == 0.0
    # Scale and position do not change proportions.
    bigger = gt.copy()
    bigger[:21, :2] = 2 * gt[:21, :2] + 7
    assert joint_ratio_difference(bigger, gt) == pytest.approx(0.0, abs=1e-12)


def test_mask_iou():
    a, b = np.zeros((20, 20), np.uint8), np.zeros((20, 20), np.uint8)
    a[0:10, 0:10] = 255
    b[5:15, 0:10] = 255
    assert mask_iou(a, b) == pytest.approx(50 / 150)
    assert mask_iou(a, a) == 1.0
    assert mask_iou(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    np.testing.assert_allclose(mask_iou(np.stack([a, a]), np.stack([a, b])), [1.0, 1 / 3])


# --- FID / KID ---------------------------------------------------------------------------------------
def test_fid_is_zero_for_identical_features_and_the_mean_shift_for_shifted_ones():
    real = np.random.default_rng(0).normal(size=(400, 8))
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(real, real + 1.0) == pytest.approx(8.0, abs=1e-8)  # same covariance: |d mu|^2


def test_fid_matches_the_textbook_formula():
    import scipy.linalg
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(300, 6)), rng.normal(size=(250, 6)) @ rng.normal(size=(6, 6)) + 0.3
    cr, cf = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    expected = np.sum((real.mean(0) - fake.mean(0)) ** 2) + np.trace(cr + cf - 2 * scipy.linalg.sqrtm(cr @ cf).real)
    assert frechet_distance(real, fake) == pytest.approx(expected, rel=1e-9)


def test_kid_is_near_zero_for_one_distribution_and_large_for_shifted():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    same, _ = kernel_inception_distance(real, fake, subset_size=100, subsets=20)
    apart, _ = kernel_inception_distance(real, fake + 1.0, subset_size=100, subsets=20)
    assert abs(same) < 0.05 < apart
    scores = fid_kid(real[:80], fake[:80] + 1.0, kid_subset_size=10_000)  # subset capped at 80
    assert set(scores) == {"fid", "kid_mean", "kid_std"} and scores["fid"] > 7


class TinyExtractor(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x)).mean((2, 3))  # (N, 4)


def images(n: int, seed: int, offset: float = 0.0) -> torch.Tensor:
    return (torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) + offset).clamp(0, 1)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # TorchScript is deprecated, still supported
def test_fid_kid_path_with_a_tiny_extractor_saved_and_loaded(tmp_path):
    torch.manual_seed(0)
    model = TinyExtractor().eval()
    torch.jit.save(torch.jit.script(model), tmp_path / "extractor.pt")
    batch = torch.export.Dim("batch")
    exported = torch.export.export(model, (images(4, 9),), dynamic_shapes=({0: batch},))
    torch.export.save(exported, tmp_path / "extractor.pt2")
    torch.save(model.state_dict(), tmp_path / "extractor_state.pt")
    scripted = load_feature_extractor(tmp_path / "extractor.pt")
    real, fake = images(40, 0), images(40, 1, offset=0.3)
    masks = torch.zeros(40, 16, 16)
    masks[:, 4:12, 4:12] = 1
    features = extract_features(scripted, real, masks, batch_size=16)
    assert features.shape == (40, 4)
    for other in (load_feature_extractor(tmp_path / "extractor.pt2"),
                  load_feature_extractor(tmp_path / "extractor_state.pt", module=TinyExtractor())):
        np.testing.assert_allclose(extract_features(other, real, masks, batch_size=16), features, rtol=1e-6)
    np.testing.assert_allclose(features, model(real * masks[:, None]).detach().double().numpy(), rtol=1e-6)
    # Background pixels do not reach the features: changing them changes nothing.
    np.testing.assert_allclose(features, extract_features(scripted, real * masks[:, None] + (1 - masks[:, None]),
                                                          masks), rtol=1e-6)
    scores = fid_kid(features, extract_features(scripted, fake, masks), kid_subset_size=20)
    assert all(np.isfinite(v) for v in scores.values()) and scores["fid"] > 0


def test_inception192_loads_a_torchvision_inception_state_dict(tmp_path):
    from torchvision.models import inception_v3
    full = inception_v3(weights=None, aux_logits=False, init_weights=False)
    torch.save(full.state_dict(), tmp_path / "inception.pt")
    extractor = load_feature_extractor(tmp_path / "inception.pt")
    assert isinstance(extractor, Inception192) and not extractor.training
    torch.testing.assert_close(extractor.Conv2d_4a_3x3.conv.weight, full.Conv2d_4a_3x3.conv.weight)
    assert extract_features(extractor, images(2, 3)).shape == (2, 192)


def test_state_dict_missing_layers_is_refused(tmp_path):
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)}, tmp_path / "partial.pt")
    with pytest.raises(RuntimeError, match="Missing key"):
        load_feature_extractor(tmp_path / "partial.pt")
