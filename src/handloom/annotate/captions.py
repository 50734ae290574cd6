"""Captions for each image; without LLaVA weights, a sentence built from the sample's metadata."""
from __future__ import annotations


def template_caption(dataset: str, handedness: list[str], metadata: dict) -> str:
    """E.g. 'A photo of a right hand showing a fist gesture (synthetic, camera 2).'"""
    hands = {0: "a hand", 1: f"a {handedness[0]} hand" if handedness else "a hand"}.get(len(handedness), "two hands")
    gesture = f" showing a {metadata['gesture'].replace('_', ' ')} gesture" if metadata.get("gesture") else ""
    view = f", camera {metadata['camera']}" if "camera" in metadata else ""
    return f"A photo of {hands}{gesture} ({dataset}{view})."
