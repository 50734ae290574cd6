"""What every public-dataset adapter shares: native records in, validated hand crops and rejects out."""
from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from handloom import schema
from handloom.chunks import batched, chunk_size, map_chunks
from handloom.datasets import crops
from handloom.datasets.sources import resolve_source
from handloom.datasets.splits import HASHED, assign_splits, hashed
from handloom.datasets.store import DatasetWriter, EncodedSample, encode_sample, printable
from handloom.io import ImageError, Picture, read_image_file
from handloom.params import DatasetParams

IDENTITY = tuple(range(schema.JOINTS_PER_HAND))  # datasets already in MediaPipe order
RECORDS_PER_CHUNK = 64  # images per unit of work: a fraction of a second each, a few MB of crops in flight
SPLIT_WORDS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "eval": "test", "evaluation": "test"}


@dataclass
class Hand:
    """One annotated hand: the unit that ends up in a manifest row or a reject row."""

    record_id: str                   # unique in the dataset; rejects name it, manifest metadata lists it
    side: str | None                 # 'right' / 'left', or None where the dataset does not say
    keypoints: np.ndarray | None     # 21x3 in MediaPipe order, source pixels, col 2 in [0, 1]; None: box only
    box: crops.Box | None = None     # the dataset's own box where it has no keypoints (HaGRID)
    metadata: dict = field(default_factory=dict)  # per hand (gesture label); the first hand's wins in a crop

    @property
    def rows(self) -> str | None:
        """Which block of the 42x3 array holds it; unknown handedness goes to the first block."""
        return None if self.keypoints is None else self.side or schema.HANDS[0]


@dataclass
class ImageRecord:
    """One native image and its hands; each crop of it becomes a sample."""

    image: ImageLookup               # where its file may be, searched when the record is cropped
    sequence: str
    split: str
    hands: list[Hand]
    frame: int = 0
    camera: str = "0"
    size: tuple[int, int] | None = None  # (width, height) the annotation was made on, when it says
    together: bool = False           # the dataset says the hands interact: one crop whatever their distance
    normalised: bool = False         # hand boxes are fractions of the image size (HaGRID)
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Spec:
    """A dataset's fixed facts: name, license text, and the reader of its native annotations."""

    name: str
    license: str
    read: Callable[[DatasetParams, Path, DatasetWriter], Iterable[ImageRecord]]


class RecordError(Exception):
    """A record that cannot become a sample, with its reject reason (one of schema.Reject) and a detail."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def reject_reason(error: Exception) -> tuple[str, str]:
    """(reason, detail) of a reject row for whatever one record raised: its own reason, else its type and message."""
    if isinstance(error, RecordError):
        return error.reason, error.detail
    return schema.Reject.BAD_RECORD, f"{type(error).__name__}: {error}"


@contextmanager
def rejected_on_error(writer: DatasetWriter, *record_ids: str):
    """Any exception in the block becomes one reject row per record id: one malformed record costs only itself."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - isolation is the point: the next record must still be read
        for record_id in record_ids:
            writer.reject(record_id, *reject_reason(e))


def entries(data, key: str, path: Path, root: Path, writer: DatasetWriter, required: bool = True) -> list | None:
    """data[key] when it is a list; otherwise None after one reject row naming the file (its records are unreadable).
    An absent key that is not `required` is an empty list."""
    value = data.get(key) if isinstance(data, dict) else None
    if isinstance(value, list) or (value is None and not required and isinstance(data, dict) and key not in data):
        return value or []
    what = "the top level" if not isinstance(data, dict) else f"{key!r}"
    found = type(data if not isinstance(data, dict) else value).__name__
    writer.reject(relative(path, root), schema.Reject.CORRUPT_ANNOTATION,
                  f"{what} is {found}, expected {'an object' if not isinstance(data, dict) else 'a list'}")
    return None


def entry_id(entry, n: int):
    """An entry's own id (a JSON string or integer), else its index in the list."""
    value = entry.get("id") if isinstance(entry, dict) else None
    return value if isinstance(value, (str, int)) and not isinstance(value, bool) else n


def numbered(items: list, path: Path, root: Path, writer: DatasetWriter) -> Iterator[tuple[str, object]]:
    """(record id `<file>#<id>`, entry) for each entry; entries that share an id are all rejected by it."""
    ids = [entry_id(entry, n) for n, entry in enumerate(items)]
    counts = Counter(ids)
    for value, entry in zip(ids, items):
        record_id = f"{relative(path, root)}#{value}"
        if counts[value] > 1:
            writer.reject(record_id, schema.Reject.DUPLICATE_ID, f"id {value!r} is used by {counts[value]} entries")
        else:
            yield record_id, entry


def index_by_id(items: list) -> dict:
    """id -> entry for the entries that are objects with a usable id; an id listed twice maps to DUPLICATE."""
    index: dict = {}
    for entry in items:
        value = entry.get("id") if isinstance(entry, dict) else None
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            index[value] = DUPLICATE if value in index else entry
    return index


DUPLICATE = object()  # index_by_id's mark for an id that names two entries


def lookup(index: dict, value, what: str = "image"):
    """The entry `value` names; RecordError when it names none, or two (whose pixels would be whose keypoints?)."""
    entry = index.get(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
    if entry is DUPLICATE:
        raise RecordError(schema.Reject.DUPLICATE_ID, f"{what} id {value!r} is listed more than once")
    if entry is None:
        raise RecordError(schema.Reject.MISSING_FIELD, f"{what} {value!r} not in {what}s")
    return entry


def run_adapter(spec: Spec, p: DatasetParams, out_dir: Path) -> DatasetWriter:
    """Resolve the source, plan the native records in key order, crop them chunk by chunk, write as they come."""
    source_dir = resolve_source(p.source, p.sha256, max_bytes=int(p.max_archive_gb * (1 << 30)))
    # Absolute: the chunks' workers (a Dask cluster) may run in another folder.
    root = (source_dir / p.subdir if p.subdir else source_dir).absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"{spec.name}: {root} is not a folder (check `source` and `subdir`)")
    writer = DatasetWriter(out_dir, spec.name, license=spec.license, source=p.source)
    records = spec.read(p, root, writer)
    if p.max_images:
        records = (r for _, r in zip(range(p.max_images), records))
    emit(writer, plan(spec.name, records, p.val_fraction, p.test_fraction), p, root)
    return writer


# --- Reading native files --------------------------------------------------------------------------
def load_json(path: Path, root: Path, writer: DatasetWriter):
    """Parsed JSON, or None after a reject row naming the file: a truncated or corrupt file never stops the stage."""
    try:
        text = path.read_bytes()
    except OSError as e:  # a folder named *.json, no permission
        writer.reject(relative(path, root), schema.Reject.CORRUPT_ANNOTATION, f"{type(e).__name__}: {e}")
        return None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        truncated = isinstance(e, json.JSONDecodeError) and e.pos >= len(text.rstrip())
        writer.reject(relative(path, root),
                      schema.Reject.TRUNCATED_ANNOTATION if truncated else schema.Reject.CORRUPT_ANNOTATION,
                      f"{type(e).__name__}: {e}")
        return None


def annotation_files(p: DatasetParams, root: Path) -> Iterator[Path]:
    """The annotation files to read. Named in params.yaml, each must exist (a typo is a configuration error); left
    at the adapter's defaults, those that exist are read and the missing ones named in one line, since a download
    often holds only some of a dataset's splits."""
    missing = [rel for rel in p.annotations if not (root / rel).exists()]
    if missing and ("annotations" in p.model_fields_set or len(missing) == len(p.annotations)):
        raise FileNotFoundError(f"annotation file(s) {', '.join(missing)} not found under {root}: set `annotations` "
                                "of this dataset in params.yaml to the files it has")
    if missing:
        print(f"{root.name}: no {', '.join(missing)}; reading the annotation files that exist", file=sys.stderr)
    for rel in p.annotations:
        if rel not in missing:
            yield root / rel


def find_image(root: Path, p: DatasetParams, split: str, file_name: str, beside: Path) -> ImageLookup:
    """Where the image named in an annotation may be: under images_dir, else beside the annotation file, else under
    root. Only names are checked here; the worker that crops the record looks at the files (`locate`): a stat and a
    link check per record were a third of planning's time, and planning runs in one process.

    Only places inside the dataset folder are looked at: a name that leaves it (`../`, an absolute path, a link
    to elsewhere) is refused as path_outside_dataset, so nothing outside a dataset is ever read."""
    if not isinstance(file_name, str) or not file_name:
        raise RecordError(schema.Reject.MISSING_FIELD, f"file_name {file_name!r} is not a file name")
    candidates = [root / p.images_dir.format(split=split) / file_name] if p.images_dir else []
    candidates += [beside / file_name, root / file_name]
    inside = tuple(c for c in candidates if named_within(c, root))
    return ImageLookup(root, file_name, inside, len(inside) < len(candidates))


@dataclass(frozen=True)
class ImageLookup:
    """The places an annotation's image may be, in the order they are searched (see find_image)."""

    root: Path
    file_name: str
    candidates: tuple[Path, ...]   # those inside the dataset folder by name
    some_outside: bool             # a place the name would reach lies outside it


def locate(lookup: ImageLookup) -> Path | None:
    """The first candidate that is a file; RecordError when the name leaves the dataset folder (by name, or by a
    link) or the file system refuses it."""
    try:
        found = next((c for c in lookup.candidates if c.is_file()), None)
    except (OSError, ValueError) as e:  # a name too long for the file system, a NUL byte in it
        raise RecordError(schema.Reject.MISSING_IMAGE, f"{type(e).__name__}: {e}") from None
    if (found is None and lookup.some_outside) or (found is not None and not within(found, lookup.root)):
        raise RecordError(schema.Reject.PATH_OUTSIDE_DATASET, f"{lookup.file_name!r} leaves the dataset folder")
    return found


def named_within(path: Path, root: Path) -> bool:
    """Whether `path` lies inside `root` by its name alone, so `../` and absolute names are never even looked at."""
    top = os.path.abspath(root)
    return os.path.abspath(path).startswith(top.rstrip(os.sep) + os.sep)


@lru_cache(maxsize=64)
def resolved(root: Path) -> Path:
    return Path(root).resolve()


def within(path: Path, root: Path) -> bool:
    """Whether `path` lies inside `root` by its name and with links followed. Only the file found is resolved:
    resolving follows every component of the path (a stat each), too slow to spend on every candidate."""
    if not named_within(path, root):
        return False
    try:
        return path.resolve().is_relative_to(resolved(root))
    except (OSError, RuntimeError, ValueError):  # a link loop, a name the file system refuses
        return False


def split_of(path: Path, p: DatasetParams, sequence: str, own_split: bool = True) -> str:
    """The dataset's own split when the file's name (or folder) says it; otherwise a placeholder that `plan` turns
    into a split by the group's hash rank once it has seen every group (splits.hashed)."""
    if own_split:
        for part in reversed(path.parts):
            for word in re.split(r"[^a-z]+", Path(part).stem.lower()):
                if word in SPLIT_WORDS:
                    return SPLIT_WORDS[word]

    return hashed(sequence)


def sanitise(name: str) -> str:
    """A sequence id the sample-key pattern accepts (ASCII word characters; a surrogate from a non-UTF-8 file name
    or a `.`-only name would break the key or a path made from it)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", str(name))
    return "_" if set(cleaned) <= {"."} else cleaned


def camera_id(name) -> str:
    """A camera id the sample-key pattern accepts (no `-`: it separates frame and camera)."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", str(name)) or "_"


def relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def tip_to_base_order(wrist: int, first: int) -> tuple[int, ...]:
    """Native indices in MediaPipe order for datasets that list each finger tip -> base (RHD, InterHand2.6M)."""
    return (wrist, *(first + 4 * f + 3 - j for f in range(5) for j in range(4)))


def keypoints_21(values, order: tuple[int, ...]) -> np.ndarray:
    """Flat or nested 21x(x, y, v) in a native order -> 21x3 float32 in MediaPipe order, v clipped to [0, 1]."""
    k = np.asarray(values, np.float64).reshape(-1, 3)
    if len(k) != schema.JOINTS_PER_HAND:
        raise ValueError(f"{len(k)} joints, expected {schema.JOINTS_PER_HAND}")
    k = k[list(order)]
    k[:, 2] = np.clip(k[:, 2], 0, 1)
    return k.astype(np.float32)


def parse_hand(writer: DatasetWriter, record_id: str, read: Callable[[], tuple[str | None, object]],
               order: tuple[int, ...] = IDENTITY, **metadata) -> Hand | None:
    """A Hand from `read()` -> (side, native keypoints), or None after a reject row saying what was wrong."""
    try:
        side, values = read()
        keypoints = keypoints_21(values, order)
    except KeyError as e:
        writer.reject(record_id, schema.Reject.MISSING_FIELD, f"no field {e}")
        return None
    except (TypeError, ValueError) as e:
        writer.reject(record_id, schema.Reject.BAD_KEYPOINT_SHAPE, str(e))
        return None
    if side not in (None, *schema.HANDS):
        writer.reject(record_id, schema.Reject.UNKNOWN_LABEL, f"handedness {side!r}")
        return None
    return Hand(record_id, side, keypoints, metadata=metadata)


def read_image(path: Path | None) -> Picture:
    """The record's pixels through io.read_image_file (the project's one reader and its policy: EXIF orientation,
    high bit depth, alpha); RecordError when there are none."""
    if path is None:
        raise RecordError(schema.Reject.MISSING_IMAGE,
                          "not found under images_dir, beside the annotation, or at the root")
    try:
        return read_image_file(path)
    except ImageError as e:
        raise RecordError(schema.Reject.UNREADABLE_IMAGE, str(e)) from None


def annotated_frame(record: ImageRecord, picture: Picture) -> str:
    """Which frame the annotation's pixels are in: "displayed" (EXIF orientation applied, what a viewer and an
    annotation tool show; the default when the annotation gives no size) or "stored" (the raw pixels, when only
    their size matches the size the annotation declares)."""
    if record.size is None or tuple(record.size) == picture.size:
        return "displayed"
    if tuple(record.size) == picture.stored_size:
        return "stored"
    raise RecordError(schema.Reject.IMAGE_SIZE_MISMATCH,
                      f"annotated {record.size[0]}x{record.size[1]}, file is {picture.size[0]}x{picture.size[1]}")


def to_displayed(hand: Hand, picture: Picture) -> Hand:
    """A hand annotated on the stored pixels, moved with them into the displayed frame (visible joints only: an
    unlabelled joint stays a zero row)."""
    if hand.keypoints is not None:
        k = hand.keypoints.copy()
        seen = k[:, 2] > 0
        k[seen, :2] = picture.from_stored(k[seen, :2])
        return Hand(hand.record_id, hand.side, k, hand.box, hand.metadata)
    corners = picture.from_stored([hand.box[:2], hand.box[2:]])
    box = (*corners.min(axis=0).tolist(), *corners.max(axis=0).tolist())
    return Hand(hand.record_id, hand.side, None, box, hand.metadata)


# --- Writing samples --------------------------------------------------------------------------------
def base_key(dataset: str, record: ImageRecord) -> str:
    """The key of a record's sample when its hands share one crop; a record cropped into several (`_h<k>`) makes
    keys that sort after it, so records walked in this order give samples no earlier record can precede."""
    return str(schema.SampleKey(dataset, record.split, sanitise(record.sequence), record.frame,
                                camera_id(record.camera)))


def plan(dataset: str, records: Iterable[ImageRecord], val_fraction: float = 0.0,
         test_fraction: float = 0.0) -> list[ImageRecord]:
    """The records with their splits resolved, in base-key order (reading order among equal keys: the first of a
    duplicate wins). A record is paths and keypoints: a few hundred bytes, where its crop is tens of kilobytes.
    A placeholder split (splits.hashed) becomes a split by its group's hash rank among all the dataset's groups:
    exact counts need every group, and the plan is where every group is known before any key is written."""
    records = list(records)
    split = assign_splits({r.split for r in records if r.split.startswith(HASHED)}, val_fraction, test_fraction)
    records = [replace(r, split=split[r.split]) if r.split in split else r for r in records]
    return sorted(records, key=lambda r: base_key(dataset, r))


def emit(writer: DatasetWriter, records: list[ImageRecord], p: DatasetParams, root: Path) -> None:
    """Every hand of every record lands in one sample's metadata["records"] or in one reject row. Chunks of records
    are cropped on the chunk engine; the writer is told after each how far the keys have come."""
    chunks = list(batched(records, chunk_size(RECORDS_PER_CHUNK)))
    floors = [base_key(writer.dataset, chunk[0]) for chunk in chunks[1:]] + [None]
    crop = partial(crop_records, writer.dataset, p, root)
    results = map_chunks(crop, chunks, desc=f"ingest {writer.dataset}", total=len(records), n_chunks=len(chunks))
    for (samples, rejects), floor in zip(results, floors):
        writer.rejects += rejects
        for sample in samples:
            writer.add_encoded(sample)
        writer.advance(floor)


@dataclass
class Crops:
    """What one chunk of records makes: its samples and its reject rows, in the writer's terms."""

    dataset: str
    samples: list[EncodedSample] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)

    def reject(self, key: str, reason: str, detail: str = "") -> None:
        self.rejects.append(dict(key=printable(key), dataset=self.dataset, stage="ingest", reason=reason,
                                 detail=printable(detail)))


def crop_records(dataset: str, p: DatasetParams, root: Path, records: list[ImageRecord]) -> tuple[list, list]:
    """(encoded samples, reject rows) of one chunk of records: the unit of work a worker owns. A record that raises
    costs its own hands only: each not rejected already gets a row with the exception's type and message, and
    nothing of it is kept."""
    out = Crops(dataset)
    for record in records:
        samples, rejects = len(out.samples), len(out.rejects)
        try:
            crop_record(out, record, p, root)
        except Exception as e:  # noqa: BLE001 - isolation is the point: the next record must still be cropped
            del out.samples[samples:]
            done = {row["key"] for row in out.rejects[rejects:]}
            _reject_all(out, [hand for hand in record.hands if hand.record_id not in done], *reject_reason(e))
    return out.samples, out.rejects


def crop_record(out: Crops, record: ImageRecord, p: DatasetParams, root: Path) -> None:
    if not 0 <= record.frame < 2**31:  # the manifest's frame column is int32
        raise RecordError(schema.Reject.BAD_RECORD, f"frame {record.frame} is not in [0, 2**31)")
    image_path = locate(record.image)
    picture = read_image(image_path)
    image = picture.pixels
    h, w = image.shape[:2]
    frame = annotated_frame(record, picture)
    hands = [to_displayed(hand, picture) for hand in record.hands] if frame == "stored" else record.hands
    if record.normalised:
        for hand in hands:
            hand.box = tuple(np.multiply(hand.box, (w, h, w, h)).tolist())
    hands = [hand for hand in hands if _usable(out, hand, w, h)]
    groups = crops.group_hands([annotated_box(hand) for hand in hands], [hand.rows for hand in hands],
                               p.interaction_gap, record.together)
    for k, group in enumerate(groups):
        sequence = record.sequence if len(groups) == 1 else f"{record.sequence}_h{k}"
        key = schema.SampleKey(out.dataset, record.split, sanitise(sequence), record.frame, camera_id(record.camera))
        schema.SampleKey.parse(str(key))  # a key the later stages can read back, or a ValueError for this record
        _add_sample(out, key, image, [hands[i] for i in group], record, p, relative(image_path, root), picture, frame)


def _reject_all(writer: Crops, hands: list[Hand], reason: str, detail: str = "") -> None:
    for hand in hands:
        writer.reject(hand.record_id, reason, detail)


def _usable(writer: Crops, hand: Hand, w: int, h: int) -> bool:
    if hand.keypoints is None:
        box = hand.box
        ok = box is not None and np.all(np.isfinite(box)) and box[2] > max(box[0], 0) and box[3] > max(box[1], 0) \
            and box[0] < w and box[1] < h
        if not ok:
            writer.reject(hand.record_id, schema.Reject.BAD_BOX, f"box {box} in a {w}x{h} image")
        return bool(ok)
    reason = schema.validate_keypoints(place(hand), w, h)
    if reason:
        writer.reject(hand.record_id, reason)
    elif not np.any(hand.keypoints[:, 2] > 0):  # coordinates without a visible joint: nothing to crop around
        reason = schema.Reject.NO_HAND
        writer.reject(hand.record_id, reason, "no joint has a visibility above 0")
    return reason is None


def place(*hands: Hand) -> np.ndarray:
    """The 42x3 array of hands with keypoints, each in its own block."""
    k = schema.empty_keypoints()
    for hand in hands:
        k[schema.hand_rows(hand.rows)] = hand.keypoints
    return k


def annotated_box(hand: Hand) -> crops.Box:
    if hand.keypoints is None:
        return tuple(map(float, hand.box))
    return schema.hand_box(place(hand), hand.rows)


def _add_sample(out: Crops, key: schema.SampleKey, image: np.ndarray, hands: list[Hand],
                record: ImageRecord, p: DatasetParams, source_image: str, picture: Picture, frame: str) -> None:
    box = crops.union([annotated_box(hand) for hand in hands])
    square = crops.Square.around(box, p.crop_scale)
    keypoints = None if hands[0].keypoints is None else square.keypoints(place(*hands), p.crop_size)
    metadata = dict(record.metadata)
    for hand in reversed(hands):  # the first hand's labels win (HaGRID lists gesturing hands first)
        metadata.update(hand.metadata)
    sides = {hand.side for hand in hands}
    metadata.update(
        handedness=[s for s in schema.HANDS if s in sides],  # [] = unknown: annotate falls back to MediaPipe
        records=[hand.record_id for hand in hands], interacting=len(hands) > 1,
        source_image=source_image, source_size=[image.shape[1], image.shape[0]],
        crop_square=[square.x0, square.y0, square.side])
    if picture.orientation != 1:  # where the pixels were turned, and which frame the annotation was read in
        metadata.update(exif_orientation=picture.orientation, annotation_frame=frame)
    if picture.alpha:
        metadata.update(alpha="composited over black")
    out.samples.append(encode_sample(key, square.cut(image, p.crop_size), keypoints, square.box(box, p.crop_size),
                                     metadata, records=tuple(hand.record_id for hand in hands)))
