"""HaGRID (native per-gesture json, v1 and later forms): hand boxes and gesture labels, no keypoints."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from handloom import schema
from handloom.datasets.adapter import (
    Hand,
    ImageRecord,
    RecordError,
    Spec,
    annotation_files,
    find_image,
    load_json,
    rejected_on_error,
    relative,
    run_adapter,
    sanitise,
    split_of,
)
from handloom.datasets.store import DatasetWriter
from handloom.params import HaGRIDParams

LICENSE = "HaGRID: a variant of CC BY-SA 4.0 (hukenovs/hagrid, license/en_us.pdf)"
NO_GESTURE = "no_gesture"  # a second, idle hand in the frame
# HaGRID v1's 18 classes, the 15 that HaGRIDv2 added, and no_gesture.
GESTURES = frozenset({
    "call", "dislike", "fist", "four", "like", "mute", "ok", "one", "palm", "peace", "peace_inverted", "rock", "stop",
    "stop_inverted", "three", "three2", "two_up", "two_up_inverted",
    "grabbing", "grip", "hand_heart", "hand_heart2", "holy", "little_finger", "middle_finger", "point", "take_picture",
    "three3", "three_gun", "thumb_index", "thumb_index2", "timeout", "xsign",
    NO_GESTURE,
})


def read(p: HaGRIDParams, root: Path, writer: DatasetWriter) -> Iterator[ImageRecord]:
    """`annotations` name folders (one per split) of `<gesture>.json`; a file name is also accepted."""
    for entry in annotation_files(p, root):
        for path in sorted(entry.glob("*.json")) if entry.is_dir() else [entry]:
            data = load_json(path, root, writer)
            if isinstance(data, dict):
                for uuid, item in sorted(data.items()):
                    record = None
                    with rejected_on_error(writer, f"{relative(path, root)}#{uuid}"):
                        record = _record(p, root, path, uuid, item, writer)
                    if record is not None:
                        yield record
            elif data is not None:
                writer.reject(relative(path, root), schema.Reject.CORRUPT_ANNOTATION, "top level is not a mapping")


def _record(p: HaGRIDParams, root: Path, path: Path, uuid: str, item: dict, writer: DatasetWriter):
    record_id = f"{relative(path, root)}#{uuid}"
    try:
        boxes, labels = item["bboxes"], item["labels"]
    except (KeyError, TypeError) as e:
        writer.reject(record_id, schema.Reject.MISSING_FIELD, f"no field {e}")
        return None
    if not isinstance(boxes, list) or not isinstance(labels, list):
        raise RecordError(schema.Reject.MISSING_FIELD, f"bboxes {type(boxes).__name__} and labels "
                          f"{type(labels).__name__}, expected two lists")
    if not boxes:
        writer.reject(record_id, schema.Reject.NO_HAND, "no bboxes")
        return None
    if len(boxes) != len(labels):
        writer.reject(record_id, schema.Reject.MISSING_FIELD, f"{len(boxes)} bboxes but {len(labels)} labels")
        return None
    hands = []
    for k, (box, label) in enumerate(zip(boxes, labels)):
        if not isinstance(label, str) or label not in GESTURES:
            writer.reject(f"{record_id}/{k}", schema.Reject.UNKNOWN_LABEL, f"gesture {label!r}")
            continue
        try:
            x, y, w, h = map(float, box)
        except (TypeError, ValueError):
            writer.reject(f"{record_id}/{k}", schema.Reject.BAD_BOX, f"box {box!r}")
            continue
        # Later releases name the gesturing hand's side (`leading_hand`); v1 does not, and no_gesture hands never.
        side = item.get("leading_hand") if label != NO_GESTURE and item.get("leading_hand") in schema.HANDS else None
        hands.append(Hand(f"{record_id}/{k}", side, None, box=(x, y, x + w, y + h), metadata={"gesture": label}))
    if not hands:  # each box has its own reject row
        return None
    hands.sort(key=lambda hand: hand.metadata["gesture"] == NO_GESTURE)  # gesturing hands first: their label leads
    split = split_of(path, p, uuid)
    gesture_class = path.stem
    return ImageRecord(find_image(root, p, split, f"{gesture_class}/{uuid}.jpg", path.parent), sanitise(uuid), split,
                       hands, normalised=True, metadata=dict(user_id=item.get("user_id"), gesture_class=gesture_class))


SPEC = Spec("hagrid", LICENSE, read)


def ingest_hagrid(p: HaGRIDParams, out_dir: Path) -> DatasetWriter:
    return run_adapter(SPEC, p, out_dir)
