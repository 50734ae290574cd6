"""The papers' quality filters (MediaPipe score, mask area, agreement with ground truth) and per-dataset agreement."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from handloom.annotate.keypoints import HandDetection
from handloom.keypoint_metrics import detection_rate, pck
from handloom.params import AnnotateParams
from handloom.schema import JOINTS_PER_HAND, Reject

AGREEMENT_THRESHOLD = 0.2  # a joint agrees within 0.2 x its hand's box side (PCK@0.2)


def detection_score(detection: HandDetection) -> float:
    """The weakest found hand's score; 0 when MediaPipe found none."""
    found = [s for s in detection.scores if s > 0]
    return min(found) if found else 0.0


def gt_disagreement(mp_keypoints: np.ndarray, gt_keypoints: np.ndarray) -> float:
    """Share of the joints seen in both that lie further than 0.2 x box from ground truth; NaN if none are."""

    return 1 - pck(mp_keypoints, gt_keypoints, AGREEMENT_THRESHOLD)


def comparable(mp_keypoints: np.ndarray, gt_keypoints: np.ndarray, sides_known: bool) -> np.ndarray:
    """MediaPipe's keypoints as compared with ground truth. Datasets that do not say which hand is which
    (OneHand10K) put it in the first block by convention, so there MediaPipe's two blocks are swapped when
    that makes more joints agree: its handedness is not held against a label that does not exist."""
    if sides_known:
        return mp_keypoints
    swapped = np.concatenate([mp_keypoints[JOINTS_PER_HAND:], mp_keypoints[:JOINTS_PER_HAND]])
    return max((mp_keypoints, swapped), key=lambda k: _agreeing_joints(k, gt_keypoints))


def _agreeing_joints(mp_keypoints: np.ndarray, gt_keypoints: np.ndarray) -> tuple[float, int]:
    """(joints within 0.2 x box, joints seen in both)."""
    counted = int(np.sum((mp_keypoints[:, 2] > 0) & (gt_keypoints[:, 2] > 0)))
    return (1 - gt_disagreement(mp_keypoints, gt_keypoints)) * counted if counted else 0.0, counted


def keypoint_reject(detection: HandDetection, gt: np.ndarray | None, sides_known: bool,
                    p: AnnotateParams) -> tuple[str, str] | None:
    """(reason, detail) when MediaPipe's reading of an image is not good enough, else None.

    Without ground truth the sample's keypoints are MediaPipe's, so its score decides; with ground truth the
    keypoints are exact or the label is wrong, which disagreement with MediaPipe reveals. A hand MediaPipe did
    not find (or, where sides are known, put on the other side) cannot disagree: images it misses are not held
    against the dataset.
    """
    if gt is None:
        score = detection_score(detection)
        return (Reject.LOW_DETECTION_SCORE, f"MediaPipe score {score:.3f} < {p.min_mp_score}") \
            if score < p.min_mp_score else None
    off = gt_disagreement(comparable(detection.keypoints, gt, sides_known), gt)
    return (Reject.GT_DISAGREEMENT, f"{off:.3f} of joints off ground truth > {p.max_gt_disagreement}") \
        if off > p.max_gt_disagreement else None  # NaN > x is False


def mask_reject(area: int, p: AnnotateParams) -> tuple[str, str] | None:
    return (Reject.SMALL_MASK, f"{area} px < {p.min_mask_area}") if area < p.min_mask_area else None


@dataclass
class Agreement:
    """MediaPipe against ground truth, summed chunk by chunk as integer counts, so the shares come out exactly as
    one pass over the whole dataset gives them: detection rate, PCK@0.1 and @0.2 of the hand box."""

    samples: int = 0
    hands: int = 0                # ground-truth hands, and those MediaPipe has in the same slot
    detected: int = 0
    joints: int = 0               # joints seen in both, and those within each threshold x the box
    within: dict = field(default_factory=lambda: {0.1: 0, 0.2: 0})

    def add(self, pred: list[np.ndarray], gt: list[np.ndarray]) -> None:
        if not gt:
            return
        pred, gt = np.stack(pred), np.stack(gt)
        hands = int(np.count_nonzero(np.any(gt.reshape(len(gt), 2, JOINTS_PER_HAND, 3) != 0, axis=(2, 3))))
        joints = int(np.count_nonzero((pred[..., 2] > 0) & (gt[..., 2] > 0)))
        # The metrics return shares of these denominators; times the denominator they give the counts back exactly.
        self.detected += round(detection_rate(pred, gt) * hands) if hands else 0
        for threshold in self.within:
            self.within[threshold] += round(pck(pred, gt, threshold) * joints) if joints else 0
        self.samples, self.hands, self.joints = self.samples + len(gt), self.hands + hands, self.joints + joints

    def merge(self, other: "Agreement") -> None:
        self.samples, self.hands, self.detected = (self.samples + other.samples, self.hands + other.hands,
                                                   self.detected + other.detected)
        self.joints += other.joints
        for threshold, n in other.within.items():
            self.within[threshold] += n

    def result(self) -> dict:
        if not self.samples:
            return {}
        share = lambda n, total: n / total if total else float("nan")  # noqa: E731
        return dict(detection_rate=_value(share(self.detected, self.hands)),
                    pck_0_1=_value(share(self.within[0.1], self.joints)),
                    pck_0_2=_value(share(self.within[0.2], self.joints)))


def agreement(pred: list[np.ndarray], gt: list[np.ndarray]) -> dict:
    """MediaPipe against ground truth over a dataset: detection rate, PCK@0.1 and @0.2 of the hand box."""
    counts = Agreement()
    counts.add(pred, gt)
    return counts.result()


def _value(x: float) -> float | None:
    """Four decimals for the reports; None (JSON null) where nothing could be measured."""
    return None if np.isnan(x) else round(float(x), 4)
