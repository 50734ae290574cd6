"""Captions for each image: LLaVA-1.5 (llava.py) from local weights, else a sentence made from the sample's metadata."""
from __future__ import annotations


def template_caption(dataset: str, handedness: list[str], metadata: dict) -> str:
    """E.g. 'A photo of a right hand showing the fist gesture, palm view (synthetic, camera 2).'"""
    hands = " and ".join(f"a {side} hand" for side in handedness) or "a hand"
    gesture = gesture_phrase(metadata.get("gesture"))
    view = f", {metadata['view']} view" if metadata.get("view") else ""
    camera = f", camera {metadata['camera']}" if "camera" in metadata else ""
    return f"A photo of {hands}{gesture}{view} ({dataset}{camera})."


def gesture_phrase(label: str | None) -> str:
    """' showing the fist gesture'; HaGRID's no_gesture label (an idle hand) reads ' making no gesture'."""
    if not label:
        return ""
    words = label.replace("_", " ")
    return " making no gesture" if words == "no gesture" else f" showing the {words} gesture"
