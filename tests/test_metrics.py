"""Metrics checked against answers worked out by hand."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from handloom.evaluate.metrics import (
    LPIPS_LINEAR,
    LPIPS_SCALE,
    LPIPS_SHIFT,
    Inception192,
    TorchvisionTaps,
    extract_features,
    fid_kid,
    frechet_distance,
    kernel_inception_distance,
    load_feature_extractor,
    load_lpips,
    lpips,
    mask_iou,
    psnr,
    ssim,
)
from handloom.keypoint_metrics import dap, joint_ratio_difference, mpjpe, pck
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
    assert fid_kid(features, features, kid_subset_size=20)["fid"] == pytest.approx(0.0, abs=1e-9)


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


# --- LPIPS -------------------------------------------------------------------------------------------
class TinyBackbone(nn.Module):
    """Two layers of features at two scales, as LPIPS's backbones give."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 6, 3, stride=2, padding=1)

    def forward(self, x):
        y1 = torch.relu(self.conv1(x))
        return [y1, torch.relu(self.conv2(y1))]  # (N, 4, H, W), (N, 6, H/2, W/2)


class Channels(nn.Module):
    """The (normalised) image itself as LPIPS's only layer: distances worked out on paper."""

    def forward(self, x):
        return [x]


def lin_state(weights: list[list[float]]) -> dict:
    """Linear weights as the lpips package stores them: lin<l>.model.1.weight of shape (1, C_l, 1, 1)."""
    return {f"lin{i}.model.1.weight": torch.tensor(w).view(1, -1, 1, 1) for i, w in enumerate(weights)}


def save_lpips_dir(directory, backbone: nn.Module, weights: list[list[float]], exported: bool = False):
    """An LPIPS weights directory: a TorchScript backbone.pt (or torch.export backbone.pt2) and linear.pth."""
    directory.mkdir()
    if exported:
        example = (torch.zeros(2, 3, 16, 16),)
        torch.export.save(torch.export.export(backbone.eval(), example, dynamic_shapes=({0: torch.export.Dim("n")},)),
                          directory / "backbone.pt2")
    else:
        torch.jit.save(torch.jit.script(backbone.eval()), directory / "backbone.pt")
    torch.save(lin_state(weights), directory / LPIPS_LINEAR)
    return directory


def lpips_by_hand(features, weights, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Zhang et al.'s formula in float64 numpy: sum_l mean_hw sum_c w_c (f0/|f0| - f1/|f1|)^2."""
    shift, scale = torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1)
    with torch.no_grad():
        fa, fb = features((a - shift) / scale), features((b - shift) / scale)
    total = np.zeros(len(a))
    for ya, yb, w in zip(fa, fb, weights):
        ya, yb = ya.double().numpy(), yb.double().numpy()
        ua = ya / (np.sqrt((ya**2).sum(1, keepdims=True)) + 1e-10)
        ub = yb / (np.sqrt((yb**2).sum(1, keepdims=True)) + 1e-10)
        total += (np.asarray(w)[None, :, None, None] * (ua - ub) ** 2).sum(1).mean((1, 2))
    return total


def constant_images(scaled_rgb) -> torch.Tensor:
    """A 1x3x8x8 image in [-1, 1] whose ImageNet-normalised pixels all equal scaled_rgb."""
    return (torch.tensor(LPIPS_SHIFT) + torch.tensor(LPIPS_SCALE) * torch.tensor(scaled_rgb)).view(1, 3, 1, 1).expand(
        1, 3, 8, 8).clone()


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_lpips_of_unit_colour_vectors_is_the_sum_of_their_channel_weights(tmp_path):
    model = load_lpips(save_lpips_dir(tmp_path / "lpips", Channels(), [[0.25, 0.5, 4.0]]))
    red, green = constant_images([1.0, 0.0, 0.0]), constant_images([0.0, 2.0, 0.0])
    # Unit vectors (1,0,0) and (0,1,0): squared difference (1,1,0), weighted 0.25 + 0.5.
    assert lpips(model, red, green).item() == pytest.approx(0.75, abs=1e-6)
    # Normalisation over channels: a brighter red points the same way, so it is at distance 0.
    assert lpips(model, red, constant_images([3.0, 0.0, 0.0])).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
@pytest.mark.parametrize("exported", [False, True], ids=["torchscript", "torch.export"])
def test_lpips_with_a_tiny_random_backbone_matches_the_formula_by_hand(tmp_path, exported):
    torch.manual_seed(0)
    backbone, weights = TinyBackbone(), [[0.1, 0.7, 0.0, 1.3], [0.5, 0.2, 0.9, 0.4, 2.0, 0.05]]
    model = load_lpips(save_lpips_dir(tmp_path / "lpips", backbone, weights, exported))
    a = images(5, 0) * 2 - 1
    b = (a + 0.1 * torch.randn(a.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    np.testing.assert_allclose(lpips(model, a, b, batch_size=2).numpy(), lpips_by_hand(backbone, weights, a, b),
                               rtol=1e-5)
    assert torch.equal(lpips(model, a, a.clone()), torch.zeros(5))  # identical images: exactly 0
    assert torch.equal(lpips(model, a, b), lpips(model, b, a))       # symmetric
    far = (a + 0.5 * torch.randn(a.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    assert (lpips(model, a, far) > lpips(model, a, b)).all()         # a larger perturbation is further


def test_lpips_loads_a_torchvision_state_dict_from_one_file_or_a_directory(tmp_path):
    from torchvision.models import AlexNet
    torch.manual_seed(0)
    full = AlexNet().eval()
    widths = (64, 192, 384, 256, 256)
    weights = [torch.rand(c, generator=torch.Generator().manual_seed(c)).tolist() for c in widths]
    features = {k: v for k, v in full.state_dict().items() if k.startswith("features.")}  # classifier: unused, 230 MB
    torch.save({**features, **lin_state(weights)}, tmp_path / "lpips_alex.pt")
    (tmp_path / "alex").mkdir()
    torch.save(features, tmp_path / "alex" / "backbone.pt")
    torch.save(lin_state(weights), tmp_path / "alex" / LPIPS_LINEAR)
    a, b = torch.rand(2, 2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1  # alexnet needs > 16 px
    # The lpips package compares alexnet's five ReLU outputs: features[:2], [:5], [:8], [:10], [:12].
    expected = lpips_by_hand(lambda x: [full.features[:i + 1](x) for i in (1, 4, 7, 9, 11)], weights, a, b)
    for path in (tmp_path / "lpips_alex.pt", tmp_path / "alex"):
        model = load_lpips(path)
        torch.testing.assert_close(model.backbone.features[3].weight, full.features[3].weight)
        np.testing.assert_allclose(lpips(model, a, b).numpy(), expected, rtol=1e-5)


def test_lpips_torchvision_taps_are_the_relus_of_vgg16_and_alexnet():
    for widths in [(64, 128, 256, 512, 512), (64, 192, 384, 256, 256)]:
        taps = TorchvisionTaps(widths)
        assert all(isinstance(taps.features[i], nn.ReLU) for i in taps.taps)
        assert tuple(f.shape[1] for f in taps(torch.zeros(1, 3, 64, 64))) == widths


def test_lpips_refuses_negative_or_unknown_linear_weights(tmp_path):
    torch.save(lin_state([[0.5, -0.1, 0.2]]), tmp_path / "negative.pt")
    with pytest.raises(ValueError, match="non-negative"):
        load_lpips(tmp_path / "negative.pt")
    torch.save(lin_state([[0.5] * 3]), tmp_path / "narrow.pt")
    with pytest.raises(ValueError, match=r"widths \(3,\) match no torchvision backbone"):
        load_lpips(tmp_path / "narrow.pt")
