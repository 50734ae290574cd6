"""The synthetic hand renderer: determinism, multi-view/temporal geometry, exact labels, anatomy."""
import json

import cv2
import numpy as np
import pytest

from handloom import schema
from handloom.datasets import synthetic as S
from handloom.datasets.synthetic import appearance, sequences
from handloom.datasets.synthetic import hand as kinematics
from handloom.datasets.synthetic.grid import frames_grid

SIZE = 96


@pytest.fixture(scope="module")
def sequence():
    """One single-hand sequence: 6 frames x 3 cameras."""
    return S.render_sequence(1, 0, n_frames=6, n_cameras=3, image_size=SIZE, two_hand_prob=0.0)


def by_key(frames):
    return {(f.sequence, f.frame, f.camera): f for f in frames}


def bone_angles(joints: np.ndarray) -> np.ndarray:
    """(20,) angle in degrees between each bone and its parent bone (0 for bones leaving the wrist)."""
    angles = []
    for parent, child in schema.BONES:
        grand = schema.JOINT_PARENTS[parent]
        if grand < 0:
            angles.append(0.0)
            continue
        a, b = joints[parent] - joints[grand], joints[child] - joints[parent]
        angles.append(np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))
    return np.array(angles)


def test_same_seed_gives_identical_arrays_and_sequences_render_alone():
    a = list(S.render_dataset(5, 3, 2, 2, 48, 0.5))
    b = S.render_sequence(5, 2, 2, 2, 48, 0.5)
    again = by_key(S.render_sequence(5, 2, 2, 2, 48, 0.5))
    assert len(a) == 3 * 2 * 2
    from_dataset = by_key(a)
    for key, f in by_key(b).items():
        for other in (from_dataset[key], again[key]):
            assert np.array_equal(f.image, other.image) and np.array_equal(f.mask, other.mask)
            assert np.array_equal(f.keypoints, other.keypoints) and f.metadata == other.metadata
    assert not np.array_equal(from_dataset[("seq00000", 0, "0")].image, from_dataset[("seq00001", 0, "0")].image)


def test_frames_have_the_unified_layout(sequence):
    assert {(f.frame, f.camera) for f in sequence} == {(i, c) for i in range(6) for c in "012"}
    for f in sequence:
        assert f.sequence == "seq00000" and f.image.shape == (SIZE, SIZE, 3) and f.image.dtype == np.uint8
        assert f.mask.shape == (SIZE, SIZE) and set(np.unique(f.mask)) <= {0, 255}
        assert f.keypoints.shape == (42, 3) and f.keypoints.dtype == np.float32
        assert schema.validate_keypoints(f.keypoints, SIZE, SIZE) is None
        json.dumps(f.metadata)
        assert f.metadata["view"] in ("palm", "back") and f.metadata["gesture"] in kinematics.GESTURES


def test_view_pairs_share_3d_joints_but_not_2d(sequence):
    frames = by_key(sequence)
    for frame in range(6):
        views = [frames[("seq00000", frame, c)] for c in "012"]
        for a, b in zip(views, views[1:]):
            assert np.array_equal(a.joints3d, b.joints3d)
            present = a.keypoints[:, 2] > 0
            assert np.abs(a.keypoints[present, :2] - b.keypoints[present, :2]).mean() > 3


def test_pose_pairs_change_smoothly(sequence):
    frames = by_key(sequence)
    joints = np.stack([frames[("seq00000", i, "0")].joints3d for i in range(6)])
    steps = np.linalg.norm(np.diff(joints, axis=0), axis=-1).max(-1)  # largest joint move per frame, mm
    assert steps.max() > 1, "the hand should move"
    assert steps.max() < 60, "consecutive frames are close poses"
    # between frames the joint angles follow a C1 path: no velocity jump at keyframes
    track = sequences.HandTrack.sample(np.random.default_rng(0), "right", 4, np.eye(3), np.zeros(3))
    path = np.stack([np.concatenate(track.at(u)[:2]) for u in np.linspace(0, 1, 1001)])
    first, second = np.abs(np.diff(path, axis=0)).max(), np.abs(np.diff(path, 2, axis=0)).max()
    assert second < 0.05 * first
    assert np.all(path[:, :20] >= kinematics.POSE_LIMITS[:, 0]) and np.all(path[:, :20] <= kinematics.POSE_LIMITS[:, 1])


def test_keypoints_lie_inside_the_mask(sequence):
    inside = total = 0
    for f in sequence:
        mask = cv2.dilate(f.mask, np.ones((3, 3), np.uint8))
        k = f.keypoints[f.keypoints[:, 2] > 0]
        x, y = np.clip(k[:, 0].astype(int), 0, SIZE - 1), np.clip(k[:, 1].astype(int), 0, SIZE - 1)
        inside += int((mask[y, x] > 0).sum())
        total += len(k)
        assert 0.03 < f.mask.mean() / 255 < 0.6, "the hand fills a fair share of the frame"
    assert inside / total > 0.9


def test_poses_respect_joint_limits():
    rng = np.random.default_rng(0)
    for _ in range(200):
        name, pose = kinematics.sample_pose(rng)
        assert name in kinematics.GESTURES
        assert np.all(pose >= kinematics.POSE_LIMITS[:, 0]) and np.all(pose <= kinematics.POSE_LIMITS[:, 1])
        angles = bone_angles(kinematics.articulate(pose)[0])  # on the 3D skeleton, independent of the parameters
        # angles[j - 1] is the flexion at joint j's parent
        mcp, pip, dip = angles[[5, 9, 13, 17]], angles[[6, 10, 14, 18]], angles[[7, 11, 15, 19]]
        assert np.all(mcp <= 95) and np.all(pip <= 110 + 1e-6) and np.all(dip <= 80 + 1e-6)
        assert angles[3] <= 80 + 1e-6 and angles[2] <= 60 + 1e-6  # thumb IP, MCP


def test_thumb_opposes_in_a_pinch():
    joints, _ = kinematics.articulate(kinematics.gesture_pose("pinch"))
    open_hand, _ = kinematics.articulate(kinematics.gesture_pose("open"))
    assert np.linalg.norm(joints[4] - joints[8]) < 20  # thumb and index pads meet
    assert np.linalg.norm(open_hand[4] - open_hand[8]) > 80


def test_left_hand_is_the_mirrored_right_hand():
    pose = kinematics.gesture_pose("point")
    shape = kinematics.HandShape()
    look = appearance.Look.sample(np.random.default_rng(0))
    tracks = {h: sequences.HandTrack(h, ["point"] * 2, np.stack([pose, pose]), np.zeros((2, 3)), np.eye(3), np.zeros(3))
              for h in schema.HANDS}
    states = {h: sequences._hand_state(track, shape, look, 0.0) for h, track in tracks.items()}
    assert np.allclose(states["left"].joints, states["right"].joints * [-1, 1, 1])
    # find a single left-hand and a two-hand sequence: rows follow handedness
    seqs = [S.render_sequence(2, i, 1, 1, 48, 0.5)[0] for i in range(8)]
    for f in seqs:
        for hand in schema.HANDS:
            assert schema.hand_present(f.keypoints, hand) == (hand in f.handedness)
    assert {f.handedness for f in seqs} >= {("left",), ("right", "left")}
    assert all(f.metadata["interacting"] == (len(f.handedness) == 2) for f in seqs)


@pytest.mark.parametrize("size", [64, 512])
def test_other_image_sizes(size):
    f = S.render_sequence(0, 3, 1, 1, size, 0.0)[0]
    assert f.image.shape == (size, size, 3) and f.mask.shape == (size, size)
    assert schema.validate_keypoints(f.keypoints, size, size) is None
    box = schema.hand_box(f.keypoints, f.handedness[0])
    assert 0.2 * size < max(box[2] - box[0], box[3] - box[1]) < 0.8 * size


def test_sample_grid_draws_keypoint_sets(tmp_path, sequence):
    frames = sequence[:4]
    shifted = [f.keypoints + [3, 0, 0] for f in frames]
    frames_grid(frames, tmp_path / "grid.png", {"shifted": shifted})
    grid = cv2.imread(str(tmp_path / "grid.png"))
    assert grid is not None and grid.shape[1] == 6 * 192
