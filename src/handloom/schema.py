"""The one definition of every on-disk format in handloom: keypoints, keys, manifests, shards, batches."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

# --- Keypoints -------------------------------------------------------------------------------
# MediaPipe's 21-joint order: 0 wrist; then CMC/MCP -> tip for thumb, index, middle, ring, little.
JOINT_NAMES = (
    "wrist",
    "thumb_cmc", "thumb_mcp", "thumb_ip", "thumb_tip",
    "index_mcp", "index_pip", "index_dip", "index_tip",
    "middle_mcp", "middle_pip", "middle_dip", "middle_tip",
    "ring_mcp", "ring_pip", "ring_dip", "ring_tip",
    "little_mcp", "little_pip", "little_dip", "little_tip",
)
JOINTS_PER_HAND = 21
NUM_KEYPOINTS = 2 * JOINTS_PER_HAND  # rows 0-20 right hand, 21-41 left hand (FoundHand)
KEYPOINT_COLUMNS = ("x", "y", "confidence")  # x, y in pixels; confidence/visibility in [0, 1]
HANDS = ("right", "left")
FINGERS = ("thumb", "index", "middle", "ring", "little")
# Joint indices of each finger, base -> tip, with the wrist first so segments start at the palm.
FINGER_CHAINS = {f: (0, *range(1 + 4 * i, 5 + 4 * i)) for i, f in enumerate(FINGERS)}
# Parent of every joint in the kinematic tree (wrist is the root).
JOINT_PARENTS = (-1, *(c[k - 1] for c in FINGER_CHAINS.values() for k in range(1, 5)))
# Bones as (parent, child) pairs, thumb first.
BONES = tuple((JOINT_PARENTS[j], j) for j in range(1, JOINTS_PER_HAND))


def hand_rows(hand: str) -> slice:
    """Rows of the 42x3 array that hold `hand` ('right' or 'left')."""
    start = HANDS.index(hand) * JOINTS_PER_HAND
    return slice(start, start + JOINTS_PER_HAND)


def empty_keypoints() -> np.ndarray:
    """A 42x3 array in which both hands are absent."""
    return np.zeros((NUM_KEYPOINTS, 3), np.float32)


def hand_present(keypoints: np.ndarray, hand: str) -> bool:
    """A hand is absent when all its rows are zero."""
    return bool(np.any(keypoints[hand_rows(hand)] != 0))


def on_sides(keypoints: np.ndarray, sides) -> np.ndarray:
    """A lone hand moved into the rows of the one side given for it (e.g. a sample whose handedness came from
    elsewhere than its keypoints' block); anything else as it is."""
    present, sides = [h for h in HANDS if hand_present(keypoints, h)], list(sides if sides is not None else ())
    if len(present) != 1 or len(sides) != 1 or present[0] == sides[0]:
        return keypoints
    out = empty_keypoints()
    out[hand_rows(sides[0])] = keypoints[hand_rows(present[0])]
    return out


def validate_keypoints(keypoints: np.ndarray, width: int, height: int) -> str | None:
    """The reject reason for a keypoint array, or None when it is usable."""
    k = np.asarray(keypoints)
    if k.shape != (NUM_KEYPOINTS, 3):
        return Reject.BAD_KEYPOINT_SHAPE
    if not np.all(np.isfinite(k)):
        return Reject.NONFINITE_KEYPOINTS
    if not any(hand_present(k, h) for h in HANDS):
        return Reject.NO_HAND
    visible = k[:, 2] > 0
    xy = k[visible, :2]
    if np.any(xy < 0) or np.any(xy[:, 0] >= width) or np.any(xy[:, 1] >= height):
        return Reject.KEYPOINTS_OUTSIDE_IMAGE
    return None


def hand_box(keypoints: np.ndarray, hand: str) -> tuple[float, float, float, float] | None:
    """Tight (x0, y0, x1, y1) box of one hand's visible keypoints, or None when absent."""
    k = keypoints[hand_rows(hand)]
    k = k[k[:, 2] > 0]
    if len(k) == 0:
        return None
    return float(k[:, 0].min()), float(k[:, 1].min()), float(k[:, 0].max()), float(k[:, 1].max())


# --- Sample keys -----------------------------------------------------------------------------
KEY_PATTERN = re.compile(r"^(?P<dataset>[\w.-]+)/(?P<split>train|val|test)/(?P<sequence>[\w.-]+)/"
                         r"(?P<frame>\d+)-(?P<camera>[\w.]+)$")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SampleKey:
    """`<dataset>/<split>/<sequence>/<frame>-<camera>`; single images use their id and `0-0`."""

    dataset: str
    split: str
    sequence: str
    frame: int
    camera: str

    def __str__(self) -> str:
        return f"{self.dataset}/{self.split}/{self.sequence}/{self.frame}-{self.camera}"

    @classmethod
    def parse(cls, key: str) -> "SampleKey":
        m = KEY_PATTERN.match(key)
        if not m:
            raise ValueError(f"not a sample key: {key!r}")
        return cls(m["dataset"], m["split"], m["sequence"], int(m["frame"]), m["camera"])

    @property
    def webdataset_key(self) -> str:
        """WebDataset splits member names at the first dot, so the key in a tar has none."""
        return str(self).replace("/", "__").replace(".", "_")


# --- Tables ----------------------------------------------------------------------------------
KEYPOINTS_TYPE = pa.list_(pa.float32(), NUM_KEYPOINTS * 3)  # flattened 42x3, row-major
# A sample's key and its parts, first in the manifest and in the shard index alike.
SAMPLE_ID_FIELDS = [
    ("key", pa.string()),
    ("dataset", pa.string()),
    ("split", pa.string()),
    ("sequence", pa.string()),
    ("frame", pa.int32()),
    ("camera", pa.string()),
]

MANIFEST = pa.schema([
    *SAMPLE_ID_FIELDS,
    ("image_uri", pa.string()),       # `<images file relative to the manifest>#<key>` or a path/URL
    ("image_sha256", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("gt_keypoints", KEYPOINTS_TYPE),  # null when the dataset has none (HaGRID)
    ("bbox", pa.list_(pa.float32(), 4)),  # x0, y0, x1, y1 of the crop's hands, pixels
    ("metadata", pa.string()),        # JSON: gesture label, view, handedness, ...
    ("license", pa.string()),
    ("source", pa.string()),
])

# Encoded pixels live beside the manifest in Parquet parts, so DVC hashes a few files, not thousands.
IMAGES = pa.schema([
    ("key", pa.string()),
    ("jpeg", pa.binary()),
    ("mask_png", pa.binary()),  # null when the dataset has no exact mask
])

ANNOTATIONS = pa.schema([
    ("key", pa.string()),
    ("mp_keypoints", KEYPOINTS_TYPE),  # MediaPipe, right rows 0-20 / left 21-41, col 2 = score
    ("mp_handedness", pa.list_(pa.string())),
    ("mp_scores", pa.list_(pa.float32(), 2)),  # right, left detection score (0 when absent)
    ("keypoint_backend", pa.string()),
    ("mask_png", pa.binary()),
    ("mask_area", pa.int32()),
    ("mask_backend", pa.string()),
    ("caption", pa.string()),
    ("caption_backend", pa.string()),
    # The sample's hands by side and where that came from (ground_truth, mediapipe, unknown): ground truth wins
    # where the dataset says; the shard puts a lone hand in that side's rows and the caption names it.
    ("handedness", pa.list_(pa.string())),
    ("handedness_source", pa.string()),
])

REJECTS = pa.schema([
    ("key", pa.string()),        # sample key, or the source record id when no key could be formed
    ("dataset", pa.string()),
    ("stage", pa.string()),
    ("reason", pa.string()),     # one of Reject
    ("detail", pa.string()),
])

SHARD_INDEX = pa.schema([
    *SAMPLE_ID_FIELDS,
    ("shard", pa.string()),      # tar file name relative to the shards directory
    ("offset", pa.int64()),      # byte offset of the sample's first member header in the tar
    ("mp_detected", pa.int8()),  # hands MediaPipe found
    ("mp_score_min", pa.float32()),  # MediaPipe's lowest score over the sample's hands (0: one was missed)
    ("hands", pa.int8()),        # hands in the sample's keypoints: 2 = interacting / two-hand crop
    ("has_gt", pa.bool_()),      # keypoints are the dataset's ground truth, not MediaPipe's
    ("mask_area", pa.int32()),
])

PAIR_KINDS = ("pose", "view", "self")  # flag embedding: pose 0, view 1 (self pairs train as pose)
FLAG = {"pose": 0, "view": 1, "self": 0, "null": 2}
PAIRS = pa.schema([
    ("split", pa.string()),
    ("reference", pa.string()),
    ("target", pa.string()),
    ("kind", pa.string()),
])


class Reject:
    """Reasons a record is set aside; each becomes a row in rejects.parquet."""

    UNREADABLE_IMAGE = "unreadable_image"
    BAD_KEYPOINT_SHAPE = "bad_keypoint_shape"
    NONFINITE_KEYPOINTS = "nonfinite_keypoints"
    NO_HAND = "no_hand"
    KEYPOINTS_OUTSIDE_IMAGE = "keypoints_outside_image"
    MISSING_FIELD = "missing_field"
    UNKNOWN_LABEL = "unknown_label"
    LOW_DETECTION_SCORE = "low_detection_score"
    SMALL_MASK = "small_mask"
    GT_DISAGREEMENT = "gt_disagreement"
    # Ingest of public datasets: the native file or record could not be turned into a sample.
    MISSING_IMAGE = "missing_image"
    IMAGE_SIZE_MISMATCH = "image_size_mismatch"  # pixels differ from the size the annotation was made on
    CORRUPT_ANNOTATION = "corrupt_annotation"
    TRUNCATED_ANNOTATION = "truncated_annotation"
    BAD_BOX = "bad_box"                          # box-only datasets (HaGRID): empty, non-finite or off-image
    DUPLICATE_KEY = "duplicate_key"
    DUPLICATE_ID = "duplicate_id"                # two entries of one file share an id: which one is meant is unknown
    PATH_OUTSIDE_DATASET = "path_outside_dataset"  # a file name that leaves the dataset folder (../, absolute, link)
    BAD_RECORD = "bad_record"                    # reading the record raised: the detail names the type and message
    SPLIT_LEAK = "split_leak"  # the sequence also lies in a held-out split, where it stays


# --- File names inside each stage's output directory -------------------------------------------
MANIFEST_FILE = "manifest.parquet"      # data/ingest/<dataset>/
IMAGES_DIR = "images"                   # data/ingest/<dataset>/images/part-NNNNN.parquet (IMAGES)
REJECTS_FILE = "rejects.parquet"        # beside the output of every stage that can reject
ANNOTATIONS_FILE = "annotations.parquet"  # data/annotations/<dataset>/
INDEX_FILE = "index.parquet"            # data/shards/ (SHARD_INDEX)
PAIRS_FILE = "pairs.parquet"            # data/shards/ (PAIRS)
STATS_DIR = "stats"                     # data/shards/stats/<shard>.json, like img2dataset
# Per dataset, in stats/: its index rows, and a record (fingerprint of its inputs, shards, rejects) written
# last, so a rerun reuses a dataset's shards only when a complete earlier run made them from the same inputs.
DATASET_INDEX_FILE = "{dataset}.index.parquet"
DATASET_RECORD_FILE = "{dataset}.dataset.json"
DATASET_CARD_FILE = "{dataset}.card.json"  # what the dataset card says of it, under the record's fingerprint
CARD_FILE = "README.md"                 # data/shards/: the Hugging Face dataset card (shards/card.py)

# --- Shard members ---------------------------------------------------------------------------
SHARD_MEMBERS = ("jpg", "mask.png", "kpts.npy", "json")
SHARD_PATTERN = "{dataset}-{split}-{index:05d}.tar"  # one dataset per shard: adding a dataset touches only its own
SHARD_GLOB = "{dataset}-{split}-[0-9]*.tar"  # every shard of a split ("*" for all datasets): the index is digits

# --- Training batches ------------------------------------------------------------------------
# Images are float32 in [-1, 1], (N, 3, H, W); conditioning is (N, C, H, W); flag is (N,) long.
BATCH_KEYS = ("reference", "reference_cond", "target", "target_cond", "target_mask", "flag")


def table_from_rows(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """A table with exactly `schema`'s columns, whatever order the rows list them in."""
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)
