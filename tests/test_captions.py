"""Captions: LLaVA through transformers from a tiny saved model (real processor, real generate), and the template."""
import numpy as np
import pytest

from handloom.annotate.captions import template_caption
from handloom.annotate.llava import LlavaCaptioner
from tiny_models import save_tiny_llava


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    return LlavaCaptioner(str(save_tiny_llava(tmp_path_factory.mktemp("llava"))), "cpu")


def test_llava_captions_each_image_alike_alone_or_batched(captioner):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48 + 8 * i, 64, 3), np.uint8) for i in range(3)]
    captions = captioner.captions(images)
    assert len(captions) == 3 and all(isinstance(c, str) and c for c in captions)
    assert captioner.captions(images[1:2]) == captions[1:2]
    assert "ASSISTANT" not in captions[0]  # only the answer, not the echoed prompt


def test_llava_loads_only_local_weights(tmp_path):
    with pytest.raises(OSError):
        LlavaCaptioner(str(tmp_path / "missing"), "cpu")


def test_template_caption_says_hands_gesture_view_dataset_and_camera():
    caption = template_caption("synthetic", ["right", "left"], {"gesture": "thumbs_up", "view": "palm", "camera": "2"})
    assert caption == ("A photo of a right hand and a left hand showing the thumbs up gesture, palm view "
                       "(synthetic, camera 2).")
    assert template_caption("hagrid", [], {"gesture": "fist"}) == "A photo of a hand showing the fist gesture (hagrid)."
    assert template_caption("freihand", ["left"], {}) == "A photo of a left hand (freihand)."
