"""Annotation backends: MediaPipe keypoints, masks, captions."""
