"""The annotation cache: a rerun, or a second dataset with the same images, calls no backend at all and writes the
same bytes; every backend runs for real (MediaPipe, GrabCut, a tiny SAM, a tiny LLaVA)."""
from collections import Counter

import pytest

from conftest import TOY_SPECS, write_toy_dataset
from handloom import schema
from handloom.annotate import keypoints, llava, masks, sam
from handloom.annotate.cache import AnnotationCache, params_hash
from handloom.annotate.pipeline import annotate_dataset
from handloom.params import AnnotateParams
from tiny_models import TINY_SAM, save_tiny_llava, save_tiny_sam


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    return str(save_tiny_sam(root / "sam.pth")), str(save_tiny_llava(root / "llava"))


@pytest.fixture
def calls(monkeypatch):
    """Images each backend was asked to annotate, counted at the call that does the work."""
    counts = Counter()

    def counting(name, fn, n=lambda *a: 1):
        def wrapper(*args, **kwargs):
            counts[name] += n(*args)
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(keypoints, "detect_hands", counting("mediapipe", keypoints.detect_hands))
    monkeypatch.setattr(masks, "grabcut_mask", counting("grabcut", masks.grabcut_mask))
    monkeypatch.setattr(sam.SamMasker, "mask", counting("sam", sam.SamMasker.mask))
    monkeypatch.setattr(llava.LlavaCaptioner, "captions",
                        counting("llava", llava.LlavaCaptioner.captions, lambda self, images: len(images)))
    monkeypatch.setitem(sam.SAM_CONFIGS, "vit_b", TINY_SAM)
    sam.sam_masker.cache_clear()
    llava.llava_captioner.cache_clear()
    yield counts
    sam.sam_masker.cache_clear()
    llava.llava_captioner.cache_clear()


def outputs(directory) -> dict:
    return {name: (directory / name).read_bytes() for name in (schema.ANNOTATIONS_FILE, schema.REJECTS_FILE)}


@pytest.mark.parametrize("mask_backend", ["grabcut", "sam"])
def test_a_rerun_and_a_dataset_sharing_the_images_do_no_work(tmp_path, weights, calls, mask_backend):
    write_toy_dataset(tmp_path, "toy", TOY_SPECS)
    write_toy_dataset(tmp_path, "copy", TOY_SPECS)  # the same seed: the same images under other keys
    p = AnnotateParams(workers=1, mask_backend=mask_backend, sam_checkpoint=weights[0], sam_model_type="vit_b",
                       llava_path=weights[1], min_mask_area=0, cache_dir=str(tmp_path / "cache"), device="cpu")
    n = len(TOY_SPECS)

    first = annotate_dataset(tmp_path / "ingest" / "toy", tmp_path / "a", p)
    assert first["annotated"] == n
    assert calls == {"mediapipe": n, mask_backend: n, "llava": n}

    calls.clear()
    assert annotate_dataset(tmp_path / "ingest" / "toy", tmp_path / "b", p) == first
    assert annotate_dataset(tmp_path / "ingest" / "copy", tmp_path / "c", p)["annotated"] == n
    assert sum(calls.values()) == 0
    assert outputs(tmp_path / "a") == outputs(tmp_path / "b")


def test_cache_addresses_by_image_backend_and_params(tmp_path):
    cache = AnnotationCache(tmp_path)
    sha = "ab" * 32
    assert cache.get("grabcut", sha, params_hash(x=1), "png") is None
    cache.put("grabcut", sha, params_hash(x=1), "png", b"mask")
    assert cache.get("grabcut", sha, params_hash(x=1), "png") == b"mask"
    assert cache.path("grabcut", sha, params_hash(x=1), "png").relative_to(tmp_path).parts[:2] == ("grabcut", "ab")
    assert cache.get("grabcut", sha, params_hash(x=2), "png") is None
    assert cache.get("sam-vit_b", sha, params_hash(x=1), "png") is None
    assert params_hash(a=1, b=2) == params_hash(b=2, a=1)
    assert not list(tmp_path.rglob("*.tmp"))  # written through a temp file renamed into place
