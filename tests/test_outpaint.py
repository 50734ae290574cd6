"""Hand-to-body outpainting through the real diffusers loading and inpainting code, on a tiny random pipeline."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from handloom.cli import main
from handloom.io import decode_image, encode_png, umask
from handloom.outpaint import expansion, load_inpainting, outpaint, place_hand

HANDLOOM = str(Path(sys.executable).parent / "handloom")  # pyproject's console script
CANVAS = (48, 64)  # width, height
AT = (16, 24)


def tiny_inpainting_pipeline(path):
    """A randomly initialised Stable Diffusion inpainting pipeline (9-channel UNet) saved at `path`.

    The CLIP tokenizer's files are written here: a byte-level alphabet, each symbol also as a word end, no merges.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    symbols = sorted(ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate([*symbols, *(s + "</w>" for s in symbols), "<|startoftext|>", "<|endoftext|>"])}
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=77)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"]))
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=9, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(16, 32), latent_channels=4, layers_per_block=1, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    pipe = StableDiffusionInpaintPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                          scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.save_pretrained(path / "pipeline")
    return path / "pipeline"


class Recorder:
    """The pipeline, recording each call's mask and output image."""

    def __init__(self, pipe):
        self.pipe, self.masks, self.outputs = pipe, [], []

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def __call__(self, **kwargs):
        result = self.pipe(**kwargs)
        self.masks.append(np.asarray(kwargs["mask_image"]) > 0)
        self.outputs.append((np.clip(result.images[0], 0, 1) * 255).round().astype(np.uint8))
        return result


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    return tiny_inpainting_pipeline(tmp_path_factory.mktemp("inpaint"))


@pytest.fixture(scope="module")
def pipe(pipeline_dir):
    return load_inpainting(pipeline_dir)


def test_outpainting_keeps_the_hand_exactly_and_fills_the_canvas(pipe):
    hand = np.random.default_rng(0).integers(0, 256, (16, 16, 3), np.uint8)
    recorder = Recorder(pipe)
    body = outpaint(recorder, hand, CANVAS, AT, "a person", passes=3, steps=1, guidance_scale=1.0, seed=0)
    assert body.shape == (64, 48, 3) and body.dtype == np.uint8
    x, y = AT
    assert np.array_equal(body[y:y + 16, x:x + 16], hand)  # pixel for pixel
    # Sequential expansion: each pass repaints what is not yet kept, never the hand, and the repainted
    # region shrinks as the kept one grows.
    _, hand_region = place_hand(hand, CANVAS, AT)
    areas = [m.sum() for m in recorder.masks]
    assert len(areas) == 3 and areas[0] == hand_region.size - hand_region.sum() and areas[0] > areas[1] > areas[2] > 0
    assert not any(m[hand_region].any() for m in recorder.masks)
    # Filled: every pixel outside the hand comes from the pass whose ring holds it.
    kept = hand_region
    for grown, painted in zip(expansion(hand_region, 3), recorder.outputs):
        ring = grown & ~kept
        assert ring.any() and np.array_equal(body[ring], painted[ring])
        kept = grown
    assert kept.all()


def test_outpainting_keeps_only_the_given_mask(pipe):
    hand = np.random.default_rng(1).integers(0, 256, (16, 16, 3), np.uint8)
    keep = np.zeros((16, 16), bool)
    keep[4:12, 4:12] = True  # the hand's own mask: the crop's background is repainted with the body
    body = outpaint(pipe, hand, CANVAS, AT, "a person", keep=keep, passes=2, steps=1, guidance_scale=1.0)
    x, y = AT
    assert np.array_equal(body[y + 4:y + 12, x + 4:x + 12], hand[4:12, 4:12])
    assert not np.array_equal(body[y:y + 16, x:x + 16], hand)


def test_the_outpaint_command(pipeline_dir, tmp_path, capsys):
    hand = np.random.default_rng(2).integers(0, 256, (8, 8, 3), np.uint8)
    (tmp_path / "hand.png").write_bytes(encode_png(hand))
    args = ["outpaint", "--hand", str(tmp_path / "hand.png"), "--pipeline", str(pipeline_dir), "--canvas", "48x64",
            "--hand-size", "16", "--passes", "2", "--steps", "1", "--guidance-scale", "1", "--device", "cpu"]
    assert main([*args, "--at", "16,24", "--out", str(tmp_path / "body.png")]) == 0
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("outpaint:")]
    assert [line.split(" (")[0] for line in progress] == ["outpaint: 1/2 step", "outpaint: 2/2 step"]  # a log's lines
    assert (tmp_path / "body.png").stat().st_mode & 0o777 == 0o666 & ~umask()
    body = decode_image((tmp_path / "body.png").read_bytes())
    assert body.shape == (64, 48, 3) and np.array_equal(body[24:40, 16:32], cv2.resize(hand, (16, 16),
                                                                                       interpolation=cv2.INTER_CUBIC))
    assert main([*args, "--at", "40,0", "--out", str(tmp_path / "off.png")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == "error: a 16x16 hand at (40, 0) does not fit a 48x64 canvas"


def test_a_wrong_pipeline_path_is_one_error_line(tmp_path):
    """Not diffusers' Hub lookup ("couldn't connect to huggingface.co"), a traceback or library notices: the real
    console script, in fresh processes (a notice shows once per process), one per kind of wrong path."""
    (tmp_path / "hand.png").write_bytes(encode_png(np.zeros((8, 8, 3), np.uint8)))
    missing, empty, broken = tmp_path / "missing", tmp_path / "empty", tmp_path / "broken"
    empty.mkdir()
    broken.mkdir()
    (broken / "model_index.json").write_text(json.dumps({  # components named, their folders absent
        "_class_name": "StableDiffusionInpaintPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "DDIMScheduler"]}))
    runs = {path: subprocess.Popen([HANDLOOM, "outpaint", "--hand", str(tmp_path / "hand.png"), "--pipeline", str(path),
                                    "--canvas", "32x32", "--out", str(tmp_path / "body.png"), "--device", "cpu"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for path in (missing, empty, broken)}
    for path, proc in runs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2 and out == "", (path, out, err)
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and str(path) in err, err
    assert not (tmp_path / "body.png").exists()
