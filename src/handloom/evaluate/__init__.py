"""Evaluation of generated hands: image, keypoint, mask and distribution metrics."""
