"""Augmentations move image, mask and keypoints together; a flip turns a right hand into a left one."""
import cv2
import numpy as np
import pytest

from handloom import schema
from handloom.params import AugmentParams, ParamsError, parse_params
from handloom.shards.augment import Transform, apply, augment_pair, draw, flip
from handloom.shards.conditioning import heatmaps42, scale_keypoints
from handloom.shards.reader import ExampleSpec, to_example

SIZE = 64


def dotted_sample(rng, hands=("right",)) -> dict:
    """Keypoints on integer pixels, each marked in the image with its joint number, the mask with 255."""
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    k = schema.empty_keypoints()
    cells = rng.choice(SIZE * SIZE, schema.NUM_KEYPOINTS, replace=False)
    for hand in hands:
        rows = schema.hand_rows(hand)
        k[rows, 0], k[rows, 1], k[rows, 2] = cells[rows] % SIZE, cells[rows] // SIZE, 1
    for row in np.flatnonzero(k[:, 2]):
        x, y = k[row, :2].astype(int)
        image[y, x], mask[y, x] = row + 1, 255
    return dict(key="toy/train/s/0-0", image=image, mask=mask, keypoints=k, meta={})


def test_flip_twice_is_identity():
    s = dotted_sample(np.random.default_rng(0), hands=("right", "left"))
    back = flip(flip(s))
    for name in ("image", "mask", "keypoints"):
        np.testing.assert_array_equal(back[name], s[name])


def test_a_flipped_right_hand_is_a_left_hand_at_mirrored_x():
    s = dotted_sample(np.random.default_rng(1))
    right, left = schema.hand_rows("right"), schema.hand_rows("left")
    f = flip(s)
    assert not schema.hand_present(f["keypoints"], "right") and schema.hand_present(f["keypoints"], "left")
    np.testing.assert_array_equal(f["keypoints"][left, 0], SIZE - 1 - s["keypoints"][right, 0])
    np.testing.assert_array_equal(f["keypoints"][left, 1:], s["keypoints"][right, 1:])


def blob_sample(rng, hand: str, joint: int) -> dict:
    """One seen joint, drawn as a 5x5 square in the image and the mask, away from the borders."""
    k = schema.empty_keypoints()
    row = schema.hand_rows(hand).start + joint
    x, y = rng.integers(16, 48, 2)
    k[row] = x, y, 1
    image, mask = np.zeros((SIZE, SIZE, 3), np.uint8), np.zeros((SIZE, SIZE), np.uint8)
    image[y - 2:y + 3, x - 2:x + 3], mask[y - 2:y + 3, x - 2:x + 3] = 200, 255
    return dict(key="toy/train/s/0-0", image=image, mask=mask, keypoints=k, meta={})


def centroid(a: np.ndarray) -> np.ndarray:
    ys, xs = np.indices(a.shape[:2])
    w = a.reshape(*a.shape[:2], -1).sum(-1).astype(np.float64)
    return np.array([(xs * w).sum(), (ys * w).sum()]) / w.sum()


@pytest.mark.parametrize("seed", range(12))
def test_every_transform_keeps_image_mask_and_keypoints_aligned(seed):
    """A joint's keypoint stays at the centre of its mark in the image and the mask, in its new hand's row."""
    rng = np.random.default_rng(seed)
    hand, joint = schema.HANDS[seed % 2], int(rng.integers(schema.JOINTS_PER_HAND))
    s = blob_sample(rng, hand, joint)
    t = draw(rng, AugmentParams(gamma=(1, 1), p_flip=0.5, crop_scale=(0.7, 0.9)), SIZE, SIZE)
    out = apply(s, t)
    assert out["image"].shape == s["image"].shape and out["mask"].shape == s["mask"].shape
    other = {"right": "left", "left": "right"}[hand] if t.flip else hand
    x, y, seen = out["keypoints"][schema.hand_rows(other).start + joint]
    assert np.count_nonzero(out["keypoints"]) == 3 and seen == 1  # one row moved; the mark stays inside
    np.testing.assert_allclose(centroid(out["image"]), (x, y), atol=0.15)  # a half-pixel slip would be 0.5
    np.testing.assert_allclose(centroid(out["mask"]), (x, y), atol=0.15)


def test_a_joint_the_crop_cuts_off_becomes_unseen():
    s = blob_sample(np.random.default_rng(0), "right", 3)
    x, y = s["keypoints"][3, :2].astype(int)
    out = apply(s, Transform(crop=(x + 3, 0, SIZE - x - 3)))
    assert out["keypoints"][3, 2] == 0 and out["keypoints"][3, 0] < 0 and not out["mask"].any()


def test_gamma_changes_pixels_only():
    s = dotted_sample(np.random.default_rng(2))
    s["image"][:] = 128
    out = apply(s, Transform(gamma=2.0))
    assert out["image"].max() == round(255 * (128 / 255) ** 2)
    np.testing.assert_array_equal(out["keypoints"], s["keypoints"])
    np.testing.assert_array_equal(out["mask"], s["mask"])
    assert apply(s, Transform()) is s


def test_pairs_share_flip_and_gamma_but_self_pairs_draw_their_own():
    p = AugmentParams(p_flip=0.5, gamma=(0.5, 2.0), crop_scale=(0.6, 1.0))
    s = dotted_sample(np.random.default_rng(3))
    for seed in range(20):
        ref, tgt = augment_pair(s, s, "pose", p, np.random.default_rng(seed))
        assert schema.hand_present(ref["keypoints"], "left") == schema.hand_present(tgt["keypoints"], "left")
    flips = {schema.hand_present(t["keypoints"], "left") != schema.hand_present(r["keypoints"], "left")
             for r, t in (augment_pair(s, s, "self", p, np.random.default_rng(seed)) for seed in range(20))}
    assert flips == {True, False}  # the self target is flipped apart from its reference some of the time
    np.testing.assert_array_equal(s["keypoints"], dotted_sample(np.random.default_rng(3))["keypoints"])  # untouched


def test_to_example_augments_only_with_params_and_an_rng():
    s = dotted_sample(np.random.default_rng(4))
    spec = ExampleSpec(16, "heatmaps42", 1.5, augment=AugmentParams(p_flip=1.0, gamma=(1, 1), crop_scale=(1, 1)))
    flipped = to_example(s, s, "self", spec, np.random.default_rng(0))
    plain = to_example(s, s, "self", spec, None)
    right_wrist, left_wrist = schema.hand_rows("right").start, schema.hand_rows("left").start
    assert plain["target_cond"][right_wrist].max() > 0.5 and plain["target_cond"][left_wrist].max() == 0
    assert flipped["target_cond"][left_wrist].max() > 0.5 and flipped["target_cond"][right_wrist].max() == 0


def test_augment_params_are_validated_with_their_key_path():
    assert parse_params({"train": {"augment": {"p_flip": 0.2}}}).train.augment.p_flip == 0.2
    with pytest.raises(ParamsError, match="train.augment.crop_scale"):
        parse_params({"train": {"augment": {"crop_scale": [0.9, 0.5]}}})


def test_augmenting_at_the_model_resolution_matches_augmenting_then_resizing():
    """The loader crops, flips and adjusts gamma straight at the model's resolution. The reference is the
    direct computation: augment at the image's size, then resize to the model's (INTER_AREA) and render."""
    size, r = 128, 64
    rng = np.random.default_rng(5)
    image = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (0, 0), 2)
    mask = cv2.circle(np.zeros((size, size), np.uint8), (60, 70), 30, 255, -1)
    k = schema.empty_keypoints()
    k[:, :2], k[:, 2] = rng.uniform(2, size - 3, (schema.NUM_KEYPOINTS, 2)), 1
    k[schema.hand_rows("left")] = 0  # one hand absent: its rows must stay all-zero
    s = dict(key="toy/train/s/0-0", image=image, mask=mask, keypoints=k, meta={})
    p = AugmentParams(gamma=(0.8, 1.25), p_flip=0.5, crop_scale=(0.8, 1.0))
    for seed in range(16):
        t = draw(np.random.default_rng(seed), p, size, size)
        fast, slow = apply(s, t, size=r), apply(s, t)
        assert fast["image"].shape == (r, r, 3) and fast["mask"].shape == (r, r)
        slow_image = cv2.resize(slow["image"], (r, r), interpolation=cv2.INTER_AREA)
        assert np.abs(fast["image"].astype(int) - slow_image).mean() < 1.0  # grey levels of 255
        np.testing.assert_array_equal(fast["keypoints"][:, 2], slow["keypoints"][:, 2])
        np.testing.assert_array_equal(fast["keypoints"] == 0, slow["keypoints"] == 0)
        present = slow["keypoints"].any(axis=1)
        np.testing.assert_allclose(fast["keypoints"][present, :2],
                                   scale_keypoints(slow["keypoints"], size, r)[present], atol=1e-4)
        fast_heat, slow_heat = heatmaps42(fast["keypoints"], fast["mask"], r, r), heatmaps42(
            slow["keypoints"], slow["mask"], size, r)
        np.testing.assert_allclose(fast_heat[:-1], slow_heat[:-1], atol=1e-4)
        assert np.abs(fast_heat[-1] - slow_heat[-1]).mean() < 0.01  # the mask channel's coverage
