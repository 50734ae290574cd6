"""Conditioning renderers on hand-built keypoints whose answers are known pixel by pixel."""

import cv2
import numpy as np
import pytest

from handloom.keypoint_metrics import bone_ratios
from handloom.schema import FINGER_CHAINS, FINGERS, empty_keypoints, hand_rows
from handloom.shards.conditioning import (
    CHANNELS,
    CONDITIONING,
    FINGER_GRAY,
    HAND_GRAY,
    annotated3,
    fingers11,
    heatmaps42,
    render_conditioning,
    render_panel,
)

IMAGE, R = 512, 128  # 4x downscale: image x = 4 * model x + 1.5 puts a joint on a model pixel centre
# A right hand at model resolution: fingers straight up, 8 px apart; its mirror (the left hand) lies
# on the other half of the image, so no bone of one finger comes near another finger's.
RIGHT_HAND = np.array([
    (32, 58),                                  # wrist
    (24, 52), (16, 46), (10, 40), (6, 34),     # thumb CMC -> tip
    (20, 36), (20, 28), (20, 22), (20, 16),    # index MCP -> tip
    (28, 36), (28, 28), (28, 22), (28, 16),    # middle
    (36, 36), (36, 28), (36, 22), (36, 16),    # ring
    (44, 36), (44, 28), (44, 22), (44, 16),    # little
], np.float32)


def keypoints(right=RIGHT_HAND, left=None) -> np.ndarray:
    """42x3 image-space keypoints from model-space hands (None: hand absent)."""
    k = empty_keypoints()
    for hand, xy in (("right", right), ("left", left)):
        if xy is not None:
            k[hand_rows(hand), :2] = 4 * xy + 1.5
            k[hand_rows(hand), 2] = 1
    return k


def mirrored(xy: np.ndarray) -> np.ndarray:
    return np.stack([R - 1 - xy[:, 0], xy[:, 1]], axis=1)


def midpoint(xy: np.ndarray, a: int, b: int) -> tuple[int, int]:
    """(row, col) of the pixel halfway along bone a -> b (an exact pixel centre for the fingers above)."""
    x, y = (xy[a] + xy[b]) / 2
    return int(y), int(x)


@pytest.fixture
def mask() -> np.ndarray:
    m = np.zeros((IMAGE, IMAGE), np.uint8)
    m[100:400, 120:380] = 255
    return m


@pytest.mark.parametrize("mode", sorted(CONDITIONING))
def test_channel_counts_match_registry(mode, mask):
    out = render_conditioning(mode, keypoints(left=mirrored(RIGHT_HAND)), mask, IMAGE, R,
                              rng=np.random.default_rng(0))
    assert out.shape == (CHANNELS[mode], R, R) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1


def test_unknown_mode_is_refused(mask):
    with pytest.raises(ValueError, match="unknown conditioning mode"):
        render_conditioning("heatmaps21", keypoints(), mask, IMAGE, R)


def test_heatmap_peaks_at_each_scaled_joint_with_value_one(mask):
    left = mirrored(RIGHT_HAND)
    heat = heatmaps42(keypoints(left=left), mask, IMAGE, R, sigma=1.5)
    for j, (x, y) in enumerate(np.concatenate([RIGHT_HAND, left]).astype(int)):
        assert np.unravel_index(heat[j].argmax(), heat[j].shape) == (y, x)
        assert heat[j, y, x] == pytest.approx(1.0, abs=1e-6)
        assert heat[j, y, x + 3] == pytest.approx(np.exp(-9 / (2 * 1.5**2)), rel=1e-5)  # Gaussian of sigma 1.5
    expected_mask = cv2.resize(mask.astype(np.float32) / 255, (R, R), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(heat[-1], expected_mask, atol=1 / 255)


def test_absent_hand_gives_zero_channels(mask):
    k = keypoints()  # right hand only
    assert not heatmaps42(k, mask, IMAGE, R)[hand_rows("left")].any()
    assert not fingers11(k, mask, IMAGE, R)[len(FINGERS):2 * len(FINGERS)].any()
    assert not np.isclose(annotated3(k, IMAGE, R)[2], HAND_GRAY["left"] / 255).any()
    assert not heatmaps42(empty_keypoints(), None, IMAGE, R).any()


def test_unseen_joint_gives_zero_map(mask):
    k = keypoints()
    k[8, 2] = 0  # index tip occluded
    heat = heatmaps42(k, mask, IMAGE, R)
    assert not heat[8].any() and heat[7].max() == pytest.approx(1.0)


def test_fingers11_channel_i_covers_finger_i(mask):
    fingers = fingers11(keypoints(left=mirrored(RIGHT_HAND)), mask, IMAGE, R)[:-1]
    for hand, xy in (("right", RIGHT_HAND), ("left", mirrored(RIGHT_HAND))):
        for f, finger in enumerate(FINGERS):
            channel = f + len(FINGERS) * (hand == "left")
            chain = FINGER_CHAINS[finger]
            for a, b in zip(chain[1:-1], chain[2:]):  # the finger's phalanges, away from the shared wrist
                row, col = midpoint(xy, a, b)
                assert fingers[channel, row, col] == pytest.approx(1.0, abs=1e-5)  # on the bone: Gaussian peak
                assert fingers[:, row, col].argmax() == channel


def test_mask_is_zeroed_about_half_the_time_with_rng_and_never_without(mask):
    k, rng = keypoints(), np.random.default_rng(7)
    zeroed = [not fingers11(k, mask, IMAGE, 16, rng=rng)[-1].any() for _ in range(1000)]
    assert 0.45 < np.mean(zeroed) < 0.55
    assert all(fingers11(k, mask, IMAGE, 16)[-1].any() for _ in range(50))
    assert not any(not fingers11(k, mask, IMAGE, 16, rng=rng, p_zero_mask=0)[-1].any() for _ in range(50))


def test_annotated3_draws_exact_finger_grays_lengths_and_handedness():
    out = annotated3(keypoints(left=mirrored(RIGHT_HAND)), IMAGE, R)
    ratios = bone_ratios(keypoints())
    palm = np.mean([np.linalg.norm(RIGHT_HAND[FINGER_CHAINS[f][1]] - RIGHT_HAND[0]) for f in FINGERS[1:]])
    for f, finger in enumerate(FINGERS):
        chain = FINGER_CHAINS[finger]
        for a, b in zip(chain[1:-1], chain[2:]):
            for xy in (RIGHT_HAND, mirrored(RIGHT_HAND)):
                row, col = midpoint(xy, a, b)
                assert out[0, row, col] == np.float32(FINGER_GRAY[f] / 255)
                expected = min(1.0, np.linalg.norm(xy[b] - xy[a]) / palm)
                assert out[1, row, col] == pytest.approx(expected, rel=1e-5)
    assert set(np.unique(np.round(out[0] * 255)).astype(int)) == {0, 50, 150, 250, 100, 200}
    assert set(np.unique(np.round(out[2] * 255)).astype(int)) == {0, 100, 200}
    assert out[2, 40, 28] == np.float32(200 / 255) and out[2, 40, R - 1 - 28] == np.float32(100 / 255)
    assert out[2, 2, 2] == 0 and out[0, 2, 2] == 0 and out[1, 2, 2] == 0
    assert np.isfinite(ratios[:20]).all() and np.isnan(ratios[20:]).all()


def test_render_panel_writes_a_png(tmp_path, mask):
    image = np.full((IMAGE, IMAGE, 3), 90, np.uint8)
    path = render_panel(image, keypoints(left=mirrored(RIGHT_HAND)), mask, tmp_path / "docs" / "panel.png")
    panel = cv2.imread(str(path))
    assert panel.shape == (256, 6 * 256, 3) and panel.std() > 0


def test_heatmaps_are_the_exact_gaussians_up_to_their_cut_tail():
    """Rendered in windows around the joints; a joint near or past the border is cut by it, not moved."""
    xy = np.array([(0.3, 0.2), (63.6, 40.1), (-2.0, 30.0), (31.5, 66.0), (20.25, 7.75)], np.float32)  # model px
    k = empty_keypoints()
    k[:len(xy), :2], k[:len(xy), 2] = 4 * xy + 1.5, 1  # image px of a 512 crop
    heat = heatmaps42(k, None, IMAGE, R, sigma=1.5)
    ys, xs = np.mgrid[:R, :R]
    for j, (x, y) in enumerate(xy):
        exact = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 1.5**2))
        np.testing.assert_allclose(heat[j], exact, atol=4e-6)
    assert not heat[len(xy):].any()
