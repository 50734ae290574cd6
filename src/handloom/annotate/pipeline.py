"""The annotate stage: MediaPipe keypoints, a mask and a caption for every ingested image, each cached by image
sha256 + backend + params; images the quality filters drop become reject rows with their reason."""
from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from tqdm import tqdm

from handloom import schema
from handloom.annotate import quality
from handloom.annotate.cache import AnnotationCache, params_hash, weights_fingerprint
from handloom.annotate.captions import template_caption
from handloom.annotate.keypoints import HandDetection, detect_many, suppress_duplicate
from handloom.annotate.masks import GRABCUT_ITERATIONS, GRABCUT_SIDE, GRABCUT_VERSION, grabcut_png
from handloom.annotate.pool import pmap
from handloom.chunks import batched, chunk_size, map_chunks
from handloom.datasets.store import Record, count_images, keypoints_array, manifest_images
from handloom.io import ParquetStream, decode_image, encode_npy, encode_png, remove_torn_writes, sha256
from handloom.params import AnnotateParams

KEYPOINT_BACKEND = "mediapipe-0.10.21"
# Images per chunk: a few seconds of MediaPipe each, so a task's overhead is lost in it, decoded pixels stay
# small, and a killed run or a lost Dask worker loses little (the cache is written chunk by chunk).
IMAGES_PER_CHUNK = 64


@dataclass
class ImageInProgress:
    """One readable image on its way through the backends."""

    key: str
    record: object                 # its manifest row
    image: np.ndarray              # RGB uint8
    sha256: str                    # of the JPEG bytes: the cache's address
    gt_mask_png: bytes | None
    gt: np.ndarray | None          # ground-truth keypoints, 42x3
    detection: HandDetection | None = None
    mask_backend: str = ""
    mask_png: bytes | None = None
    mask_area: int = 0

    @property
    def sides_known(self) -> bool:
        return sides_known(self.record.metadata)

    @property
    def prompt(self) -> np.ndarray:
        """The keypoints a mask is drawn from: the dataset's when it has them, else MediaPipe's."""
        return self.gt if self.gt is not None else self.detection.keypoints


def annotate_dataset(ingest_dir: Path, out_dir: Path, p: AnnotateParams) -> dict:
    """Annotate every manifest row: chunks of images on the chunk engine (`p.workers` local processes, or the Dask
    cluster named in the environment), rows written as the chunks come back in key order. Returns the stats."""
    # A worker may run in another folder (a Dask cluster): the cache is where this stage's folder says.
    p = p.model_copy(update={"cache_dir": str(Path(p.cache_dir).resolve())})
    n = count_images(ingest_dir)
    # One detector per worker: the chunk engine is the parallelism, a pool inside a chunk would fight it.
    annotate = partial(annotate_chunk, p.model_copy(update={"workers": 1}))
    size = chunk_size(IMAGES_PER_CHUNK)
    results = map_chunks(annotate, batched(manifest_images(ingest_dir), size), p.workers,
                         desc=f"annotate {Path(ingest_dir).name}", total=n, n_chunks=-(-n // size))
    return write_annotations(out_dir, results)


@dataclass
class ChunkAnnotations:
    """What one chunk makes: annotation rows and reject rows in key order, and its share of the stats."""

    rows: list[dict]
    rejects: list[dict]
    images: int
    hands_detected: int
    agreement: quality.Agreement


def annotate_chunk(p: AnnotateParams, images: list[tuple[str, bytes, bytes | None, Record]]) -> ChunkAnnotations:
    """The unit of work a worker owns: rows, rejects and stats of (key, jpeg, mask png, manifest row) in key order."""
    rows, rejects = annotate_images(images, p)
    counts = quality.Agreement()
    records = {key: record for key, _, _, record in images}
    pairs = [(quality.comparable(keypoints_array(r["mp_keypoints"]), gt, sides_known(records[r["key"]].metadata)), gt)
             for r in rows if (gt := keypoints_array(records[r["key"]].gt_keypoints)) is not None]
    counts.add([mp for mp, _ in pairs], [gt for _, gt in pairs])
    return ChunkAnnotations(rows, rejects, len(images), int(sum(np.count_nonzero(r["mp_scores"]) for r in rows)),
                            counts)


def annotate_images(images: list[tuple[str, bytes, bytes | None, Record]], p: AnnotateParams) -> tuple[list, list]:
    """(rows, rejects) for (key, jpeg, mask png, manifest row) in key order.
    Every image ends up in exactly one of the two lists, each in key order."""
    cache, rejects = AnnotationCache(Path(p.cache_dir)), []
    samples = read_samples(images, rejects)
    for sample, detection in zip(samples, keypoints_of(samples, p, cache)):
        sample.detection = detection
    samples = screen(samples, rejects, lambda s: quality.keypoint_reject(s.detection, s.gt, s.sides_known, p))
    samples = screen(samples, rejects, lambda s: missing_mask(s, p))
    masks_of(samples, p, cache)
    samples = screen(samples, rejects, lambda s: quality.mask_reject(s.mask_area, p))
    backend, captions = captions_of(samples, p, cache)
    rows = [annotation_row(s, caption, backend) for s, caption in zip(samples, captions)]
    return rows, sorted(rejects, key=lambda r: r["key"])


def write_annotations(out_dir: Path, chunks: Iterable[ChunkAnnotations]) -> dict:
    """The stage's two tables from chunks in key order, written as they come; returns the dataset's stats."""
    remove_torn_writes(out_dir)
    stats = dict(images=0, annotated=0, rejected=0, rejects=Counter(), hands_detected=0)
    counts = quality.Agreement()
    with ParquetStream(out_dir / schema.REJECTS_FILE, schema.REJECTS) as rejects, \
            ParquetStream(out_dir / schema.ANNOTATIONS_FILE, schema.ANNOTATIONS) as rows:
        for chunk in chunks:
            rows.write_rows(chunk.rows)
            rejects.write_rows(chunk.rejects)
            stats["images"] += chunk.images
            stats["annotated"] += len(chunk.rows)
            stats["rejected"] += len(chunk.rejects)
            stats["rejects"].update(r["reason"] for r in chunk.rejects)
            stats["hands_detected"] += chunk.hands_detected
            counts.merge(chunk.agreement)
    return stats | dict(rejects=dict(sorted(stats["rejects"].items()))) | counts.result()


# --- One chunk, step by step --------------------------------------------------------------------
def read_samples(images, rejects: list) -> list[ImageInProgress]:
    samples = []
    for key, jpeg, mask_png, record in images:
        image = decode_image(jpeg)
        if image is None:
            rejects.append(reject_row(key, record, (schema.Reject.UNREADABLE_IMAGE, "image bytes do not decode")))
        elif why := ground_truth_reject(record.gt_keypoints, image):
            rejects.append(reject_row(key, record, why))
        else:
            gt = keypoints_array(record.gt_keypoints)
            samples.append(ImageInProgress(key, record, image, sha256(jpeg), mask_png, gt))
    return samples


def ground_truth_reject(flat, image: np.ndarray) -> tuple[str, str] | None:
    """(reason, detail) for ground truth no prompt or metric can use. Ingest validates its own rows; a manifest
    written by other tools (or an older ingest) may still hold the wrong size, NaN/inf or off-image joints."""
    if flat is None:
        return None
    k = np.asarray(flat, np.float32)
    reason = schema.validate_keypoints(k.reshape(-1, 3) if k.size % 3 == 0 else k, image.shape[1], image.shape[0])
    return (reason, f"ground truth of {k.size} values") if reason else None


def screen(samples: list[ImageInProgress], rejects: list,
           reason: Callable[[ImageInProgress], tuple[str, str] | None]) -> list[ImageInProgress]:
    """The samples `reason` lets through; the others become reject rows."""
    kept = []
    for s in samples:
        if why := reason(s):
            rejects.append(reject_row(s.key, s.record, why))
        else:
            kept.append(s)
    return kept


def reject_row(key: str, record, why: tuple[str, str]) -> dict:
    return dict(key=key, dataset=record.dataset, stage="annotate", reason=why[0], detail=why[1])


def cached(cache: AnnotationCache, backend: str, ext: str, samples: list[ImageInProgress], params: Iterable[str],
           compute: Callable[[list[ImageInProgress]], list[bytes]]) -> list[bytes]:
    """Each sample's result from the cache; the misses computed in one call, then stored."""
    params = list(params)
    found = [cache.get(backend, s.sha256, h, ext) for s, h in zip(samples, params)]
    missing = [i for i, data in enumerate(found) if data is None]
    if missing:
        for i, data in zip(missing, compute([samples[i] for i in missing])):
            cache.put(backend, samples[i].sha256, params[i], ext, data)
            found[i] = data
    return found


def keypoints_of(samples: list[ImageInProgress], p: AnnotateParams, cache: AnnotationCache) -> list[HandDetection]:
    def detect(todo: list[ImageInProgress]) -> list[bytes]:
        return [encode_npy(d.keypoints) for d in detect_many([s.image for s in todo], p.min_detection_confidence,
                                                             p.workers or None)]

    key = params_hash(min_detection_confidence=p.min_detection_confidence)
    found = cached(cache, KEYPOINT_BACKEND, "npy", samples, [key] * len(samples), detect)
    # Fresh or cached, every detection is read back from the same bytes: the rows cannot tell which it was.
    return [detection_from(np.load(io.BytesIO(data))) for data in found]


def detection_from(keypoints: np.ndarray) -> HandDetection:
    """detect_hands writes each found hand's score into its rows' third column, so the 42x3 array holds it all.
    The cache keeps MediaPipe's own answer; one hand found twice is read back as one."""
    keypoints = suppress_duplicate(keypoints)
    scores = (float(keypoints[schema.hand_rows("right")][0, 2]), float(keypoints[schema.hand_rows("left")][0, 2]))
    return HandDetection(keypoints, tuple(h for h, s in zip(schema.HANDS, scores) if s), scores)


def mask_backend(s: ImageInProgress, p: AnnotateParams) -> str:
    """auto: the dataset's exact mask, else SAM with a checkpoint, else GrabCut."""
    backend = p.mask_backend
    if backend == "auto":
        backend = "ground_truth" if s.gt_mask_png is not None else "sam" if p.sam_checkpoint else "grabcut"
    return f"sam-{p.sam_model_type}" if backend == "sam" else backend


def missing_mask(s: ImageInProgress, p: AnnotateParams) -> tuple[str, str] | None:
    if mask_backend(s, p) == "ground_truth" and s.gt_mask_png is None:
        return schema.Reject.MISSING_FIELD, "mask_backend ground_truth, but the dataset has no mask for it"
    return None


def prompt_hash(s: ImageInProgress) -> str:
    return sha256(np.ascontiguousarray(s.prompt, np.float32).tobytes())


def masks_of(samples: list[ImageInProgress], p: AnnotateParams, cache: AnnotationCache) -> None:
    """Fill in each sample's mask: backend, PNG and area."""
    by_backend: dict[str, list[ImageInProgress]] = {}
    for s in samples:
        s.mask_backend = mask_backend(s, p)
        by_backend.setdefault(s.mask_backend, []).append(s)
    for backend, group in by_backend.items():
        if backend == "ground_truth":
            pngs = [s.gt_mask_png for s in group]
        elif backend == "grabcut":
            settings = dict(version=GRABCUT_VERSION, side=GRABCUT_SIDE, iterations=GRABCUT_ITERATIONS)
            pngs = cached(cache, backend, "png", group, (params_hash(prompt=prompt_hash(s), **settings) for s in group),
                          lambda todo: pmap(grabcut_png, [(s.image, s.prompt) for s in todo], p.workers, "grabcut"))
        else:
            weights = weights_fingerprint(p.sam_checkpoint)
            pngs = cached(cache, backend, "png", group, (params_hash(prompt=prompt_hash(s), weights=weights)
                                                         for s in group), lambda todo: sam_pngs(todo, p))
        for s, png in zip(group, pngs):
            s.mask_png, s.mask_area = png, int((decode_image(png, gray=True) > 127).sum())


def sam_pngs(samples: list[ImageInProgress], p: AnnotateParams) -> list[bytes]:
    from handloom.annotate.sam import sam_masker  # torch and segment-anything only when SAM is asked for

    masker = sam_masker(p.sam_checkpoint, p.sam_model_type, p.device)
    return [encode_png(masker.mask(s.image, s.prompt)) for s in tqdm(samples, desc="sam", unit="img", leave=False)]


def captions_of(samples: list[ImageInProgress], p: AnnotateParams, cache: AnnotationCache) -> tuple[str, list[str]]:
    """(backend, one caption per sample): LLaVA when weights are given, else the metadata template."""
    if p.caption_backend == "template" or (p.caption_backend == "auto" and not p.llava_path):
        return "template", [metadata_caption(s) for s in samples]
    from handloom.annotate.llava import MAX_NEW_TOKENS, PROMPT, llava_captioner  # transformers only when asked for

    key = params_hash(weights=weights_fingerprint(p.llava_path), prompt=PROMPT, max_new_tokens=MAX_NEW_TOKENS)
    found = cached(cache, "llava", "txt", samples, [key] * len(samples), lambda todo: [
        c.encode() for c in llava_captioner(p.llava_path, p.device).captions([s.image for s in todo])])
    return "llava", [data.decode() for data in found]


def sides_known(metadata: str) -> bool:
    """Whether the dataset says which hand is which (ingest writes [] where it does not)."""
    return bool(json.loads(metadata).get("handedness"))


def sample_handedness(s: ImageInProgress) -> tuple[list[str], str]:
    """(the sample's hands by side, where that came from), one rule for every dataset: the ground truth's sides
    where the dataset says them; else MediaPipe's side of the ground-truth hand it agrees with (OneHand10K); else,
    without ground-truth keypoints, MediaPipe's sides; else unknown. The caption and the shard's rows follow it."""
    said = json.loads(s.record.metadata).get("handedness")
    if said:
        return list(said), "ground_truth"
    if s.gt is None:
        return (list(s.detection.handedness), "mediapipe") if s.detection.handedness else ([], "unknown")
    matched = quality.comparable(s.detection.keypoints, s.gt, sides_known=False)
    swapped = matched is not s.detection.keypoints
    sides = [schema.HANDS[1 - i if swapped else i] for i, h in enumerate(schema.HANDS)
             if schema.hand_present(s.gt, h) and schema.hand_present(matched, h)]
    return (sides, "mediapipe") if sides else ([], "unknown")


def metadata_caption(s: ImageInProgress) -> str:
    metadata = json.loads(s.record.metadata)
    return template_caption(s.record.dataset, sample_handedness(s)[0], dict(metadata, camera=s.record.camera))


def annotation_row(s: ImageInProgress, caption: str, caption_backend: str) -> dict:
    d = s.detection
    handedness, source = sample_handedness(s)
    return dict(key=s.key, mp_keypoints=d.keypoints.ravel().tolist(), mp_handedness=list(d.handedness),
                mp_scores=list(d.scores), keypoint_backend=KEYPOINT_BACKEND, mask_png=s.mask_png,
                mask_area=s.mask_area, mask_backend=s.mask_backend, caption=caption,
                caption_backend=caption_backend, handedness=handedness, handedness_source=source)
