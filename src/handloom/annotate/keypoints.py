"""MediaPipe Hands keypoints in the unified 42x3 layout, a process-pool runner, and PCK / detection metrics."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import cv2
import numpy as np

from handloom.annotate.pool import pmap
from handloom.keypoint_metrics import detection_rate, pck
from handloom.logs import native_stderr_silenced
from handloom.schema import HANDS, JOINTS_PER_HAND, empty_keypoints, hand_rows

# The legacy solution labels handedness as if the image were a mirrored selfie: on an ordinary
# photo of a right hand it answers "Left". Checked on rendered hands of known side
# (tests/test_keypoints.py::test_handedness_follows_the_rendered_hand): MediaPipe's "Left" is our "right".
LABEL_TO_HAND = {"Left": "right", "Right": "left"}
DETECTION_SIZE = 256  # generated images are upscaled so MediaPipe's palm detector sees a hand-sized object
# Two detections whose joints lie this close on average (x the larger hand box side) are one hand found twice:
# on single-hand photos MediaPipe's palm detector can fire twice on one hand (~0.18 x box apart, often one of
# each label), while two real hands, even touching, differ joint for joint by more.
DUPLICATE_DISTANCE = 0.25


@dataclass
class HandDetection:
    keypoints: np.ndarray            # (42, 3) float32, unified layout, col 2 = the hand's score
    # The legacy API's only per-hand confidence is its handedness classifier's score; it is what we call
    # the hand's detection score (hands below min_detection_confidence never reach it).
    handedness: tuple[str, ...]      # hands found, in HANDS order
    scores: tuple[float, float]      # (right, left), 0 when absent


def make_detector(min_detection_confidence: float = 0.1):
    """A static-image MediaPipe Hands for up to two hands; it is also a context manager that frees the graph."""
    import mediapipe  # deferred: importing it costs a second and most callers only need the metrics

    with native_stderr_silenced():  # its TFLite / absl start-up notices, printed on the first image, every run
        hands = mediapipe.solutions.hands.Hands(static_image_mode=True, max_num_hands=2,
                                                min_detection_confidence=min_detection_confidence)
        hands.process(np.zeros((DETECTION_SIZE, DETECTION_SIZE, 3), np.uint8))  # static mode: no state carried
    return hands


def detect_hands(image_rgb: np.ndarray, detector) -> HandDetection:
    """Keypoints of the hands MediaPipe finds in one RGB uint8 image, in pixels (normalised x times the
    width: pixel i spans [i, i+1), as in the synthetic ground truth)."""
    h, w = image_rgb.shape[:2]
    result = detector.process(np.ascontiguousarray(image_rgb))
    found = []
    for landmarks, label in zip(result.multi_hand_landmarks or (), result.multi_handedness or ()):
        c = label.classification[0]
        xy = np.array([(p.x * w, p.y * h) for p in landmarks.landmark], np.float32)
        found.append((float(c.score), LABEL_TO_HAND[c.label], xy))
    keypoints, scores = empty_keypoints(), [0.0, 0.0]
    # Two hands with the same label: the more confident keeps its slot, the other takes the free one,
    # because two hands in one image are almost always one of each and the label is the weak part.
    for score, hand, xy in sorted(found, key=lambda f: -f[0]):
        slot = HANDS.index(hand)
        if scores[slot]:
            slot = 1 - slot
        keypoints[hand_rows(HANDS[slot])] = np.column_stack([xy, np.full(JOINTS_PER_HAND, score)])
        scores[slot] = score
    return HandDetection(keypoints, tuple(hd for hd, s in zip(HANDS, scores) if s), (scores[0], scores[1]))


def suppress_duplicate(keypoints: np.ndarray) -> np.ndarray:
    """The 42x3 keypoints with the weaker of two detections of one hand removed (see DUPLICATE_DISTANCE)."""
    right, left = keypoints[hand_rows("right")], keypoints[hand_rows("left")]
    if not (right[0, 2] > 0 and left[0, 2] > 0):
        return keypoints
    side = max(float(np.ptp(hand[:, :2], axis=0).max()) for hand in (right, left))
    if np.linalg.norm(right[:, :2] - left[:, :2], axis=1).mean() >= DUPLICATE_DISTANCE * side:
        return keypoints
    out = keypoints.copy()
    out[hand_rows("left" if right[0, 2] >= left[0, 2] else "right")] = 0
    return out


_detectors: dict[float, object] = {}  # per process and confidence, made on first use and kept for the next call


def _detect(min_detection_confidence: float, image: np.ndarray) -> HandDetection:
    if min_detection_confidence not in _detectors:
        _detectors[min_detection_confidence] = make_detector(min_detection_confidence)
    return detect_hands(image, _detectors[min_detection_confidence])


def detect_many(images: list[np.ndarray], min_detection_confidence: float = 0.1,
                workers: int | None = None) -> list[HandDetection]:
    """detect_hands over many images in a process pool (one detector per worker), in input order; inside
    pool.worker_pool() the pool and its detectors outlive the call."""
    return pmap(partial(_detect, min_detection_confidence), images, workers, "mediapipe")


def detect_all(images: np.ndarray, detector) -> np.ndarray:
    """MediaPipe keypoints (N, 42, 3) at the images' own resolution."""
    scale = images.shape[1] / DETECTION_SIZE
    found = [detect_hands(cv2.resize(im, (DETECTION_SIZE,) * 2, interpolation=cv2.INTER_CUBIC), detector).keypoints
             for im in images]
    return np.stack(found) * np.float32([scale, scale, 1])



# --- Metrics against ground truth ----------------------------------------------------------------
def measure_detection(seed: int = 0, n_sequences: int = 30, n_frames: int = 4, n_cameras: int = 3,
                      image_size: int = 256, two_hand_prob: float = 0.2, workers: int | None = None,
                      grid: str | None = None) -> dict:
    """How well MediaPipe reads the synthetic hands: {detection_rate, pck@0.2, n_hands}; `grid` also
    writes a PNG of 36 evenly spread frames with ground truth and MediaPipe drawn."""
    from handloom.datasets.synthetic import render_dataset
    from handloom.datasets.synthetic.grid import frames_grid

    frames = list(render_dataset(seed, n_sequences, n_frames, n_cameras, image_size, two_hand_prob))
    detections = detect_many([f.image for f in frames], workers=workers)
    pred = np.stack([d.keypoints for d in detections])
    gt = np.stack([f.keypoints for f in frames])
    if grid:
        picks = np.linspace(0, len(frames) - 1, min(36, len(frames))).astype(int)
        frames_grid([frames[i] for i in picks], grid, {"mediapipe": [pred[i] for i in picks]})
    return {"detection_rate": detection_rate(pred, gt), "pck@0.2": pck(pred, gt, 0.2),
            "n_hands": int(sum(len(f.handedness) for f in frames))}
