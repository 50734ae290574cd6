"""Randomly initialised SAM and LLaVA small enough for tests, saved the way real weights are (DESIGN.md: Annotation)."""
from pathlib import Path

import torch

from handloom.annotate.sam import SamConfig, build_sam

# img_size 256 / patch 16 -> a 16x16 embedding; the decoder's heads divide prompt_embed_dim / 2.
TINY_SAM = SamConfig(encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,),
                     img_size=256, patch_size=16, window_size=4, prompt_embed_dim=32, decoder_mlp_dim=64,
                     decoder_num_heads=2, iou_head_hidden_dim=32, mask_in_chans=4)


def save_tiny_sam(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    torch.save(build_sam(TINY_SAM).state_dict(), path)
    return path


def save_tiny_llava(path: Path, seed: int = 0) -> Path:
    """A LLaVA directory as save_pretrained writes it: a locally trained byte-level BPE tokenizer with <image>
    as a real special token, a CLIP vision tower of 32 px / patch 8 (16 patches + CLS) and a 2-layer Llama."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(["USER: Describe the hand or hands in this photo. ASSISTANT: A right hand, open."] * 4,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<image>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                        extra_special_tokens={"image_token": "<image>"})
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer, patch_size=8, num_additional_image_tokens=1, vision_feature_select_strategy="default")
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=32, patch_size=8, projection_dim=16),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2, vision_feature_select_strategy="default")  # -2 of the 3 hidden states
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path
