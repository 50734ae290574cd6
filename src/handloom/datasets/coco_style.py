"""mmpose's COCO-style hand files (FreiHAND, OneHand10K, RHD, CMU Panoptic): one reader, a joint order per dataset."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from handloom import schema
from handloom.datasets.adapter import (
    IDENTITY,
    Hand,
    ImageRecord,
    annotation_files,
    find_image,
    load_json,
    parse_hand,
    relative,
    sanitise,
    split_of,
)
from handloom.datasets.store import DatasetWriter
from handloom.params import DatasetParams


@dataclass(frozen=True)
class CocoStyle:
    """How one dataset's conversion differs from the next: joint order, handedness, what a picture is."""

    order: tuple[int, ...] = IDENTITY  # native index of each MediaPipe joint
    side: Callable[[dict, dict], str | None] = lambda annotation, image: None  # None: not annotated
    picture: Callable[[dict], str] = lambda image: Path(image["file_name"]).stem  # files of one photo share it
    group: Callable[[dict], str] | None = None  # what must share a split; None: the picture itself
    own_split: bool = True  # the annotation file names carry the dataset's own train/val/test split
    extra: Callable[[dict], dict] = lambda image: {}  # per-image metadata worth keeping


def read_coco_style(style: CocoStyle, p: DatasetParams, root: Path, writer: DatasetWriter) -> Iterator[ImageRecord]:
    for path in annotation_files(p, root):
        data = load_json(path, root, writer)
        if data is not None:
            yield from _records(style, p, root, path, data, writer)


def _records(style: CocoStyle, p: DatasetParams, root: Path, path: Path, data: dict,
             writer: DatasetWriter) -> Iterator[ImageRecord]:
    """One record per picture: Panoptic stores a picture once per hand (`_l`/`_r`), and they belong together."""
    images = {image.get("id"): image for image in data.get("images", [])}
    pictures: dict[str, tuple[dict, list[Hand]]] = {}
    for n, annotation in enumerate(data.get("annotations", [])):
        record_id = f"{relative(path, root)}#{annotation.get('id', n)}"
        image = images.get(annotation.get("image_id"))
        if image is None or "file_name" not in image:
            writer.reject(record_id, schema.Reject.MISSING_FIELD, f"image {annotation.get('image_id')!r} not in images")
            continue
        hand = parse_hand(writer, record_id, lambda: (style.side(annotation, image), annotation["keypoints"]),
                          style.order)
        if hand is not None:
            pictures.setdefault(sanitise(style.picture(image)), (image, []))[1].append(hand)
    for picture, (image, hands) in sorted(pictures.items()):
        group = style.group(image) if style.group else picture
        split = split_of(path, p, group, style.own_split)
        size = (image["width"], image["height"]) if "width" in image and "height" in image else None
        yield ImageRecord(find_image(root, p, split, image["file_name"], path.parent), picture, split, hands,
                          size=size, metadata=dict(image_id=image.get("id"), **style.extra(image)))
