"""LLaVA-1.5 captions through transformers, from a local weights directory (nothing is downloaded)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from handloom.annotate.sam import resolve_device

# LLaVA-1.5's conversation format; the question asks for what the hand papers caption: count, side, gesture.
PROMPT = ("USER: <image>\nDescribe the hand or hands in this photo in one sentence: how many hands, left or right, "
          "the gesture and how the fingers are posed. ASSISTANT:")
MAX_NEW_TOKENS = 60
BATCH = 8  # images per generate call; every prompt has the same length, so no padding changes a caption


class LlavaCaptioner:
    def __init__(self, path: str, device: str = "auto"):
        self.device = resolve_device(device)
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        dtype = torch.float16 if self.device == "cuda" else torch.float32
        self.model = LlavaForConditionalGeneration.from_pretrained(path, local_files_only=True, dtype=dtype)
        self.model.to(self.device).eval()

    @torch.inference_mode()
    def captions(self, images: list[np.ndarray]) -> list[str]:
        """One greedy caption per RGB image, in order."""
        out = []
        for start in range(0, len(images), BATCH):
            batch = images[start:start + BATCH]
            inputs = self.processor(images=batch, text=[PROMPT] * len(batch), return_tensors="pt")
            inputs = inputs.to(self.device, dtype=self.model.dtype)  # the dtype applies to pixel_values only
            tokens = self.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                         pad_token_id=self.processor.tokenizer.pad_token_id)
            answers = tokens[:, inputs["input_ids"].shape[1]:]  # (N, new tokens): the prompt is echoed first
            out += [c.strip() for c in self.processor.batch_decode(answers, skip_special_tokens=True)]
        return out


@lru_cache(maxsize=1)
def llava_captioner(path: str, device: str) -> LlavaCaptioner:
    """One model per process, however many chunks it annotates."""
    return LlavaCaptioner(path, device)
