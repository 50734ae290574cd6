"""segment-anything's SamPredictor prompted with hand keypoints (Pelykh): the mask backend given a checkpoint."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache, partial

import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from handloom import schema
from handloom.annotate.masks import dilate


@dataclass(frozen=True)
class SamConfig:
    """segment_anything.build_sam's sizes, every one a field so tests can build a tiny SAM the same way."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16


SAM_CONFIGS = {
    "vit_h": SamConfig(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": SamConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": SamConfig(768, 12, 12, (2, 5, 8, 11)),
}


def build_sam(c: SamConfig) -> Sam:
    """An untrained SAM of config `c`, laid out as segment_anything's checkpoints expect."""
    grid = c.img_size // c.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=c.img_size, patch_size=c.patch_size, embed_dim=c.encoder_embed_dim, depth=c.encoder_depth,
            num_heads=c.encoder_num_heads, mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=c.encoder_global_attn_indexes,
            window_size=c.window_size, out_chans=c.prompt_embed_dim),
        prompt_encoder=PromptEncoder(embed_dim=c.prompt_embed_dim, image_embedding_size=(grid, grid),
                                     input_image_size=(c.img_size, c.img_size), mask_in_chans=c.mask_in_chans),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3, transformer_dim=c.prompt_embed_dim, iou_head_depth=3,
            iou_head_hidden_dim=c.iou_head_hidden_dim,
            transformer=TwoWayTransformer(depth=2, embedding_dim=c.prompt_embed_dim, mlp_dim=c.decoder_mlp_dim,
                                          num_heads=c.decoder_num_heads)),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])


def resolve_device(device: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def load_sam(checkpoint: str, config: SamConfig, device: str = "cpu") -> Sam:
    """A SAM with the checkpoint's weights; weights_only, so a checkpoint cannot run code."""
    sam = build_sam(config)
    sam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return sam.to(device).eval()


def hand_prompts(keypoints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hands, points, 2) coordinates and (hands, points) labels, one prompt per present hand: every visible joint,
    the hand's own positive (1), the other hand's negative (0). Each prompt holds the same points, so the hands
    go through the decoder as one batch."""
    visible = keypoints[:, 2] > 0
    hands = [h for h in schema.HANDS if visible[schema.hand_rows(h)].any()]
    own = np.zeros((len(hands), len(keypoints)), bool)
    for i, hand in enumerate(hands):
        own[i, schema.hand_rows(hand)] = True
    coords = np.repeat(keypoints[None, visible, :2].astype(np.float32), len(hands), axis=0)
    return coords, own[:, visible].astype(np.float32)


class SamMasker:
    """Image embedding once per image, one decoder call for all its hands; the union of hand masks, dilated 5x5."""

    def __init__(self, checkpoint: str, config: SamConfig | str, device: str = "auto"):
        config = SAM_CONFIGS[config] if isinstance(config, str) else config
        self.predictor = SamPredictor(load_sam(checkpoint, config, resolve_device(device)))

    @torch.inference_mode()
    def mask(self, image: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        """uint8 0/255 mask of the hands in an RGB image, prompted with their keypoints (pixels, 42x3)."""
        coords, labels = hand_prompts(keypoints)
        if not len(coords):
            return np.zeros(image.shape[:2], np.uint8)
        self.predictor.set_image(image)
        device = self.predictor.device
        points = self.predictor.transform.apply_coords_torch(torch.as_tensor(coords, device=device), image.shape[:2])
        masks, _, _ = self.predictor.predict_torch(points, torch.as_tensor(labels, device=device),
                                                   multimask_output=False)  # (hands, 1, H, W) bool
        return dilate(masks.any(0)[0].cpu().numpy().astype(np.uint8) * 255)


@lru_cache(maxsize=1)
def sam_masker(checkpoint: str, model_type: str, device: str) -> SamMasker:
    """One model per process, however many chunks it annotates."""
    return SamMasker(checkpoint, model_type, device)
