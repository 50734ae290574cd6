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
    RecordError,
    annotation_files,
    entries,
    find_image,
    index_by_id,
    load_json,
    lookup,
    numbered,
    parse_hand,
    rejected_on_error,
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
    annotations = entries(data, "annotations", path, root, writer)
    images = entries(data, "images", path, root, writer) if annotations is not None else None
    if annotations is None or images is None:
        return
    images = index_by_id(images)
    pictures: dict[str, tuple[dict, list[Hand]]] = {}
    for record_id, annotation in numbered(annotations, path, root, writer):
        with rejected_on_error(writer, record_id):
            image = lookup(images, annotation.get("image_id"))
            if not isinstance(image.get("file_name"), str):
                raise RecordError(schema.Reject.MISSING_FIELD, f"image {image.get('id')!r} has no file_name")
            native = lambda a=annotation, i=image: (style.side(a, i), a["keypoints"])
            hand = parse_hand(writer, record_id, native, style.order)
            if hand is not None:
                pictures.setdefault(sanitise(style.picture(image)), (image, []))[1].append(hand)
    for picture, (image, hands) in sorted(pictures.items()):
        record = None
        with rejected_on_error(writer, *(hand.record_id for hand in hands)):
            group = style.group(image) if style.group else picture
            split = split_of(path, p, group, style.own_split)
            size = (image["width"], image["height"]) if "width" in image and "height" in image else None
            record = ImageRecord(find_image(root, p, split, image["file_name"], path.parent), picture, split, hands,
                                 size=size, metadata=dict(image_id=image.get("id"), **style.extra(image)))
        if record is not None:
            yield record
