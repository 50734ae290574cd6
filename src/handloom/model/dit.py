"""A reference-to-target Diffusion Transformer (FoundHand's DiT): joint attention over reference and target tokens."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from handloom.schema import FLAG

NUM_FLAGS = len(set(FLAG.values()))  # pose 0, view 1, null 2
REFERENCE, TARGET = 0, 1  # rows of the stream embedding


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


# --- Embedders for the noisy target, the reference, the timestep and the pair flag ------------------

class TimestepEmbedder(nn.Module):
    """Embeds scalar timesteps through sinusoidal frequencies and an MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000) -> torch.Tensor:
        """(N,) possibly fractional timesteps -> (N, dim) sinusoids, as in GLIDE/DiT."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]  # (N, half)
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, 2*half)
        if dim % 2:
            embedding = F.pad(embedding, (0, 1))
        return embedding

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))  # (N, D)


class FlagEmbedder(nn.Module):
    """Embeds the pair flag (0 pose, 1 view, 2 null): what relates the reference to the target.

    Unlike DiT's LabelEmbedder it does no dropout itself: `drop_conditions` sets the null flag when
    the reference is dropped, so training and guidance share one code path.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.embedding_table = nn.Embedding(NUM_FLAGS, hidden_size)

    def forward(self, flag: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(flag)  # (N, D)


class PatchEmbed(nn.Module):
    """One patch embedder shared by reference and target: image channels + conditioning channels -> tokens."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, image: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = self.proj(torch.cat([image, cond], dim=1))  # (N, D, H/p, W/p)
        return x.flatten(2).transpose(1, 2)  # (N, T, D)


# --- Core DiT block ----------------------------------------------------------------------------

class Attention(nn.Module):
    """Multi-head self-attention through scaled_dot_product_attention (flash/memory-efficient kernels on GPU)."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, L, D = x.shape
        qkv = self.qkv(x).reshape(N, L, 3, self.num_heads, D // self.num_heads)  # (N, L, 3, H, D/H)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (N, H, L, D/H)
        x = F.scaled_dot_product_attention(q, k, v)  # (N, H, L, D/H)
        return self.proj(x.transpose(1, 2).reshape(N, L, D))  # (N, L, D)


class Mlp(nn.Module):
    def __init__(self, hidden_size: int, mlp_hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, mlp_hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(mlp_hidden, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """A DiT block with adaptive layer norm zero (adaLN-Zero) conditioning."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # 6 x (N, D): shift, scale and gate for attention, then for the MLP
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))  # (N, L, D)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # (N, L, D)
        return x


class FinalLayer(nn.Module):
    """adaLN then a linear map from each token to a patch of `out_channels` (the output head and the mask head)."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # 2 x (N, D)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (N, T, p*p*C)


def repa_projector(hidden_size: int, repa_dim: int) -> nn.Sequential:
    """REPA's 3-layer SiLU MLP from hidden states to the frozen encoder's feature size."""
    width = min(2048, 4 * hidden_size)  # REPA uses 2048; tiny models get a proportionally tiny one
    return nn.Sequential(
        nn.Linear(hidden_size, width), nn.SiLU(),
        nn.Linear(width, width), nn.SiLU(),
        nn.Linear(width, repa_dim),
    )


# --- Condition dropout and guidance ------------------------------------------------------------

def drop_conditions(reference, reference_cond, target_cond, flag, drop_reference=None, drop_pose=None):
    """Zero the dropped conditions per sample; a dropped reference also makes the flag null.

    The masks are arguments of `DiT.forward` rather than randomness inside the model, so the training
    module draws them (and can be tested for its rates) while `forward_with_cfg` sets them exactly:
    one code path defines what "unconditional" means for both.
    """
    if drop_reference is not None:
        mask = drop_reference.view(-1, 1, 1, 1)
        reference, reference_cond = reference.masked_fill(mask, 0), reference_cond.masked_fill(mask, 0)
        flag = flag.masked_fill(drop_reference, FLAG["null"])
    if drop_pose is not None:
        target_cond = target_cond.masked_fill(drop_pose.view(-1, 1, 1, 1), 0)
    return reference, reference_cond, target_cond, flag


def compose_guidance(uncond, pose, full, appearance_scale: float, pose_scale: float) -> torch.Tensor:
    """InstructPix2Pix's compositional guidance: pose over nothing, then appearance over pose, on every channel."""
    return uncond + pose_scale * (pose - uncond) + appearance_scale * (full - pose)


# --- The model ---------------------------------------------------------------------------------

class DiT(nn.Module):
    """Diffusion model with a Transformer backbone over reference and target tokens; outputs the target only."""

    def __init__(
        self,
        input_size: int,
        patch_size: int,
        image_channels: int,
        cond_channels: int,
        hidden_size: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        mask_head: bool = False,
        repa_layer: int | None = None,
        repa_dim: int | None = None,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        if input_size % patch_size or hidden_size % num_heads:
            raise ValueError("input_size must divide by patch_size and hidden_size by num_heads")
        if (repa_layer is None) != (repa_dim is None) or (repa_layer is not None and not 1 <= repa_layer <= depth):
            raise ValueError("repa_layer (1..depth) and repa_dim are given together or not at all")
        self.image_channels, self.patch_size, self.repa_layer = image_channels, patch_size, repa_layer
        self.grad_checkpointing = grad_checkpointing

        self.x_embedder = PatchEmbed(patch_size, image_channels + cond_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.flag_embedder = FlagEmbedder(hidden_size)
        grid = input_size // patch_size
        # Fixed, so it is rebuilt here and kept out of checkpoints; the same grid serves both streams.
        pos_embed = get_2d_sincos_pos_embed(hidden_size, grid).float().unsqueeze(0)  # (1, T, D)
        self.register_buffer("pos_embed", pos_embed, persistent=False)
        self.stream_embed = nn.Parameter(torch.zeros(2, hidden_size))  # learned: which tokens are the reference

        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, image_channels)
        self.mask_head = FinalLayer(hidden_size, patch_size, 1) if mask_head else None
        self.repa_projector = repa_projector(hidden_size, repa_dim) if repa_layer is not None else None
        self.initialize_weights()

    def initialize_weights(self):
        # Transformer layers: xavier weights, zero biases (DiT/ViT).
        def _basic_init(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)
        self.apply(_basic_init)

        # The patch embedder is a linear map of each patch, so initialise it as one.
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.proj.bias, 0)

        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(self.flag_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.stream_embed, std=0.02)

        # adaLN-Zero: every block's gates start at zero, so each block starts as the identity ...
        for block in self.blocks:
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        # ... and the heads start at zero, so the initial prediction is exactly 0 (ε = 0 is the mean
        # of the noise; mask logits 0 are p = 0.5), and training starts from a calm, known loss.
        for head in (self.final_layer, self.mask_head):
            if head is not None:
                for layer in (head.adaLN_modulation[-1], head.linear):
                    nn.init.constant_(layer.weight, 0)
                    nn.init.constant_(layer.bias, 0)

    def unpatchify(self, x: torch.Tensor, channels: int) -> torch.Tensor:
        """(N, T, p*p*C) -> (N, C, H, W)."""
        p, h = self.patch_size, int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, h, p, p, channels)  # (N, h, w, p, p, C)
        x = torch.einsum("nhwpqc->nchpwq", x)  # (N, C, h, p, w, q)
        return x.reshape(x.shape[0], channels, h * p, h * p)  # (N, C, H, W)

    def _run_block(self, block: DiTBlock, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, c, use_reentrant=False)
        return block(x, c)

    def forward(self, x_t, t, target_cond, reference, reference_cond, flag,
                drop_reference=None, drop_pose=None) -> dict:
        """
        x_t: (N, C, H, W) noisy target; t: (N,) timesteps; target_cond: (N, K, H, W);
        reference: (N, C, H, W) clean reference; reference_cond: (N, K, H, W); flag: (N,) long;
        drop_reference / drop_pose: optional (N,) bool masks, see `drop_conditions`.
        Returns {"out": (N, C, H, W), ["mask_logits": (N, 1, H, W)], ["repa_tokens": (N, T, repa_dim)]}.
        """
        reference, reference_cond, target_cond, flag = drop_conditions(
            reference, reference_cond, target_cond, flag, drop_reference, drop_pose)
        ref = self.x_embedder(reference, reference_cond) + self.pos_embed + self.stream_embed[REFERENCE]  # (N, T, D)
        tgt = self.x_embedder(x_t, target_cond) + self.pos_embed + self.stream_embed[TARGET]  # (N, T, D)
        T = tgt.shape[1]
        x = torch.cat([ref, tgt], dim=1)  # (N, 2T, D): joint self-attention over both streams
        c = self.t_embedder(t) + self.flag_embedder(flag)  # (N, D)
        result = {}
        for i, block in enumerate(self.blocks, start=1):
            x = self._run_block(block, x, c)  # (N, 2T, D)
            if i == self.repa_layer:
                result["repa_tokens"] = self.repa_projector(x[:, T:])  # (N, T, repa_dim)
        tgt = x[:, T:]  # (N, T, D): only target tokens reach the heads
        result["out"] = self.unpatchify(self.final_layer(tgt, c), self.image_channels)  # (N, C, H, W)
        if self.mask_head is not None:
            result["mask_logits"] = self.unpatchify(self.mask_head(tgt, c), 1)  # (N, 1, H, W)
        return result

    def forward_with_cfg(self, x_t, t, target_cond, reference, reference_cond, flag,
                         appearance_scale: float, pose_scale: float) -> dict:
        """Classifier-free guidance with separate appearance (reference) and pose scales.

        One batched forward of three passes: unconditional, pose only, pose + reference. Every output
        channel is guided (DiT's version guided `[:, :3]` only). Other outputs come from the full pass.
        """
        N = x_t.shape[0]
        pass_of = torch.arange(3, device=x_t.device).repeat_interleave(N)  # (3N,): 0 uncond, 1 pose, 2 full
        inputs = (torch.cat([z, z, z]) for z in (x_t, t, target_cond, reference, reference_cond, flag))  # 3N each
        result = self.forward(*inputs, drop_reference=pass_of < 2, drop_pose=pass_of < 1)
        uncond, pose, full = result["out"].chunk(3)  # 3 x (N, C, H, W)
        guided = {k: v.chunk(3)[2] for k, v in result.items()}
        guided["out"] = compose_guidance(uncond, pose, full, appearance_scale, pose_scale)  # (N, C, H, W)
        return guided


# --- Positional embedding helpers (MAE/DiT) -----------------------------------------------------

def get_1d_sincos_pos_embed(embed_dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, embed_dim): sines then cosines of geometrically spaced frequencies."""
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2))  # (D/2,)
    out = pos.reshape(-1)[:, None].double() * omega[None]  # (M, D/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # (M, D)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> torch.Tensor:
    """(grid_size**2, embed_dim) row-major over the patch grid: half the channels for x, half for y."""
    if embed_dim % 4:
        raise ValueError("hidden_size must be a multiple of 4 for the 2D sin-cos embedding")
    coords = torch.arange(grid_size, dtype=torch.float64)
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")  # (h, w) each
    return torch.cat([get_1d_sincos_pos_embed(embed_dim // 2, gx), get_1d_sincos_pos_embed(embed_dim // 2, gy)], dim=1)


# --- Configs -----------------------------------------------------------------------------------
# (depth, hidden_size, num_heads) from DiT's Table 1; "T" is ours, a tiny model that trains on a CPU.
DIT_SIZES = {
    "T": dict(depth=4, hidden_size=128, num_heads=4),
    "S": dict(depth=12, hidden_size=384, num_heads=6),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "L": dict(depth=24, hidden_size=1024, num_heads=16),
    "XL": dict(depth=28, hidden_size=1152, num_heads=16),
}

def DiT_XL_2(**kwargs): return DiT(**DIT_SIZES["XL"], patch_size=2, **kwargs)  # noqa: E704
def DiT_XL_4(**kwargs): return DiT(**DIT_SIZES["XL"], patch_size=4, **kwargs)  # noqa: E704
def DiT_XL_8(**kwargs): return DiT(**DIT_SIZES["XL"], patch_size=8, **kwargs)  # noqa: E704
def DiT_L_2(**kwargs): return DiT(**DIT_SIZES["L"], patch_size=2, **kwargs)  # noqa: E704
def DiT_L_4(**kwargs): return DiT(**DIT_SIZES["L"], patch_size=4, **kwargs)  # noqa: E704
def DiT_L_8(**kwargs): return DiT(**DIT_SIZES["L"], patch_size=8, **kwargs)  # noqa: E704
def DiT_B_2(**kwargs): return DiT(**DIT_SIZES["B"], patch_size=2, **kwargs)  # noqa: E704
def DiT_B_4(**kwargs): return DiT(**DIT_SIZES["B"], patch_size=4, **kwargs)  # noqa: E704
def DiT_B_8(**kwargs): return DiT(**DIT_SIZES["B"], patch_size=8, **kwargs)  # noqa: E704
def DiT_S_2(**kwargs): return DiT(**DIT_SIZES["S"], patch_size=2, **kwargs)  # noqa: E704
def DiT_S_4(**kwargs): return DiT(**DIT_SIZES["S"], patch_size=4, **kwargs)  # noqa: E704
def DiT_S_8(**kwargs): return DiT(**DIT_SIZES["S"], patch_size=8, **kwargs)  # noqa: E704
def DiT_T_4(**kwargs): return DiT(**DIT_SIZES["T"], patch_size=4, **kwargs)  # noqa: E704

DiT_models = {
    "DiT-XL/2": DiT_XL_2, "DiT-XL/4": DiT_XL_4, "DiT-XL/8": DiT_XL_8,
    "DiT-L/2": DiT_L_2, "DiT-L/4": DiT_L_4, "DiT-L/8": DiT_L_8,
    "DiT-B/2": DiT_B_2, "DiT-B/4": DiT_B_4, "DiT-B/8": DiT_B_8,
    "DiT-S/2": DiT_S_2, "DiT-S/4": DiT_S_4, "DiT-S/8": DiT_S_8,
    "DiT-T/4": DiT_T_4,
}


def dit_size(name: str) -> dict:
    """depth, hidden_size, num_heads and patch_size of a table model, e.g. "DiT-XL/2"."""
    if name not in DiT_models:
        raise KeyError(f"unknown DiT {name!r}; one of {sorted(DiT_models)}")
    size, patch = name.removeprefix("DiT-").split("/")
    return {**DIT_SIZES[size], "patch_size": int(patch)}
