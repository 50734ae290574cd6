"""Typed params.yaml: one pydantic model per stage; a bad key stops a stage before any work."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from handloom.errors import UserError

# The largest image side any stage makes or accepts: 8192^2 RGB is 192 MiB; 200000 would be a 112 GiB frame.
MAX_IMAGE_SIDE = 8192


class Section(BaseModel):
    """Unknown keys are errors: a typo must not silently fall back to a default. No float may be NaN or infinite
    (an infinite learning rate or guidance scale passes every range check, then trains or samples garbage)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --- ingest ------------------------------------------------------------------------------------
class SyntheticParams(Section):
    seed: int = 0
    n_sequences: int = Field(24, ge=1)
    n_frames: int = Field(6, ge=1)
    n_cameras: int = Field(3, ge=1)
    image_size: int = Field(256, ge=32, le=MAX_IMAGE_SIDE)
    two_hand_prob: float = Field(0.2, ge=0, le=1)
    val_fraction: float = Field(0.1, ge=0, lt=1)   # of sequences, by hash rank: datasets/splits.py
    test_fraction: float = Field(0.1, ge=0, lt=1)


class DatasetParams(Section):
    """Where a public dataset comes from, which of its files to read, and how its hands are cropped."""

    source: str                   # local folder, local archive, or http(s)/s3 URL of a tar/zip archive
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")  # required for URLs; pins local archives
    subdir: str = ""              # folder inside the source (after extraction) that holds the dataset
    annotations: tuple[str, ...]  # annotation files (HaGRID: folders), relative to the dataset folder
    images_dir: str = ""          # where images live, relative to the dataset folder; `{split}` is filled in
    crop_size: int = Field(512, ge=32, le=MAX_IMAGE_SIDE)
    crop_scale: float = Field(1.6, ge=1)          # crop side / longer side of the hands' box: context
    interaction_gap: float = Field(0.25, ge=0)    # hands nearer than this x box side are cropped together
    val_fraction: float = Field(0.1, ge=0, lt=1)  # used only where the dataset has no split of its own
    test_fraction: float = Field(0.1, ge=0, lt=1)
    max_images: int | None = Field(None, ge=1)    # read only the first N images (smoke runs)
    max_archive_gb: float = Field(512, gt=0)      # refuse archives that declare more (archive bombs)


# mmpose's COCO-style conversions, laid out as mmpose's data preparation docs describe.
class FreiHANDParams(DatasetParams):
    annotations: tuple[str, ...] = ("annotations/freihand_train.json", "annotations/freihand_val.json",
                                    "annotations/freihand_test.json")


class OneHand10KParams(DatasetParams):
    annotations: tuple[str, ...] = ("annotations/onehand10k_train.json", "annotations/onehand10k_test.json")


class RHDParams(DatasetParams):
    annotations: tuple[str, ...] = ("annotations/rhd_train.json", "annotations/rhd_test.json")


class PanopticParams(DatasetParams):
    annotations: tuple[str, ...] = ("annotations/panoptic_train.json", "annotations/panoptic_test.json")


# Native layouts.
class InterHandParams(DatasetParams):
    annotations: tuple[str, ...] = tuple(f"annotations/{s}/InterHand2.6M_{s}_data.json"
                                         for s in ("train", "val", "test"))
    images_dir: str = "images/{split}"


class COCOWholeBodyParams(DatasetParams):
    annotations: tuple[str, ...] = ("annotations/coco_wholebody_train_v1.0.json",
                                    "annotations/coco_wholebody_val_v1.0.json")
    images_dir: str = "{split}2017"


class HaGRIDParams(DatasetParams):
    annotations: tuple[str, ...] = ("annotations/train", "annotations/val", "annotations/test")
    images_dir: str = "hagrid_dataset_512"


class IngestParams(Section):
    """One entry per dataset; dvc.yaml's `foreach` runs `ingest@<name>` for each key in params.yaml."""

    synthetic: SyntheticParams | None = SyntheticParams()
    # Public datasets: off unless params.yaml names them (the default run stays offline and synthetic).
    freihand: FreiHANDParams | None = None
    interhand: InterHandParams | None = None
    hagrid: HaGRIDParams | None = None
    onehand10k: OneHand10KParams | None = None
    rhd: RHDParams | None = None
    panoptic: PanopticParams | None = None
    coco_wholebody: COCOWholeBodyParams | None = None


# --- annotate ----------------------------------------------------------------------------------
class AnnotateParams(Section):
    min_detection_confidence: float = Field(0.1, ge=0, le=1)
    workers: int = Field(0, ge=0)  # 0 = one per core
    # auto: the dataset's exact mask when it has one, else SAM when sam_checkpoint is set, else GrabCut.
    mask_backend: Literal["auto", "ground_truth", "sam", "grabcut"] = "auto"
    # Local weights only, nothing is downloaded: a segment-anything state_dict and a LLaVA-1.5 directory.
    sam_checkpoint: str | None = Field(None, validate_default=True)
    sam_model_type: Literal["vit_h", "vit_l", "vit_b"] = "vit_h"
    caption_backend: Literal["auto", "llava", "template"] = "auto"  # auto: LLaVA when llava_path is set
    llava_path: str | None = Field(None, validate_default=True)
    # Quality filters; a filtered sample becomes a reject row with its reason.
    min_mp_score: float = Field(0.5, ge=0, le=1)  # samples without ground truth, whose keypoints are MediaPipe's
    min_mask_area: int = Field(2500, ge=0)        # pixels after dilation; 0 keeps every mask
    max_gt_disagreement: float = Field(0.5, ge=0, le=1)  # share of joints off by > 0.2 x box; 1 keeps all
    cache_dir: str = ".handloom-cache/annotations"  # by image sha256 + backend + params; not a DVC output
    device: Literal["auto", "cpu", "cuda"] = "auto"  # SAM and LLaVA; auto: cuda when present

    @field_validator("sam_checkpoint", "llava_path")
    @classmethod
    def _weights_for_chosen_backend(cls, v: str | None, info) -> str | None:
        backend = {"sam_checkpoint": ("mask_backend", "sam"), "llava_path": ("caption_backend", "llava")}
        key, name = backend[info.field_name]
        if v is None and info.data.get(key) == name:
            raise ValueError(f"required when {key} is {name}")
        return v


# --- shard -------------------------------------------------------------------------------------
class ShardParams(Section):
    crop_size: int = Field(256, ge=32, le=MAX_IMAGE_SIDE)
    max_samples: int = Field(1000, ge=1)   # per shard, before a sequence boundary closes it
    max_mb: float = Field(64, gt=0)
    jpeg_quality: int = Field(95, ge=50, le=100)
    # Partners per reference and pair kind, spread evenly over the sequence: a 300-frame x 80-camera
    # capture would otherwise list millions of pose pairs. Pairs are rebuilt every run; tars do not depend on it.
    max_partners: int = Field(8, ge=1)


# --- train -------------------------------------------------------------------------------------
class ModelParams(Section):
    patch_size: int = Field(4, ge=1)
    hidden_size: int = Field(128, ge=8)
    depth: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    mask_head: bool = False

    @model_validator(mode="after")
    def _heads_divide_hidden_size(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of num_heads {self.num_heads}")
        return self


class AugmentParams(Section):
    """FoundHand's augmentations, drawn by the loader and applied to image, mask and keypoints together."""

    gamma: tuple[float, float] = (0.8, 1.25)      # log-uniform range; (1, 1) turns it off
    p_flip: float = Field(0.5, ge=0, le=1)        # mirror, which also makes a right hand a left one
    crop_scale: tuple[float, float] = (0.8, 1.0)  # crop side / image side, uniform; (1, 1) turns it off

    @field_validator("gamma", "crop_scale")
    @classmethod
    def _low_high(cls, v: tuple[float, float], info) -> tuple[float, float]:
        upper = 1.0 if info.field_name == "crop_scale" else float("inf")
        if not 0 < v[0] <= v[1] <= upper:
            raise ValueError(f"must be [low, high] with 0 < low <= high <= {upper}")
        return v


class TrainParams(Section):
    """The one definition of every training setting: these defaults are params.yaml's values (a test holds them
    equal), the Lightning module is built from this model, and its checkpoints store it."""

    seed: int = 0
    resolution: int = Field(64, ge=8, le=MAX_IMAGE_SIDE)
    conditioning: Literal["heatmaps42", "fingers11", "annotated3"] = "heatmaps42"
    heatmap_sigma: float = Field(1.5, gt=0)
    augment: AugmentParams = AugmentParams()
    model: ModelParams = ModelParams()
    prediction: Literal["eps", "v"] = "v"
    beta_schedule: Literal["linear", "cosine"] = "cosine"  # cosine: Nichol & Dhariwal, kinder to low resolutions
    min_snr_gamma: float | None = Field(5.0, gt=0)  # Min-SNR-γ loss weighting (Hang et al., γ=5); null: plain MSE
    diffusion_steps: int = Field(1000, ge=10)
    batch_size: int = Field(8, ge=1)
    max_steps: int = Field(1200, ge=1)
    lr: float = Field(1e-3, gt=0)
    lr_schedule: Literal["cosine", "constant"] = "cosine"  # after the warmup: cosine to 0 at max_steps, or flat (DiT)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(20, ge=0)
    ema_decay: float = Field(0.99, ge=0, le=1)
    grad_clip: float = Field(1.0, gt=0)
    p_drop_reference: float = Field(0.1, ge=0, le=1)
    p_drop_pose: float = Field(0.1, ge=0, le=1)
    p_drop_both: float = Field(0.05, ge=0, le=1)
    mask_loss_weight: float = Field(0.5, ge=0)
    hand_loss_weight: float = Field(3.0, gt=0)  # diffusion loss weight on the target's hand pixels; 1: uniform
    # Local weights only (nothing is downloaded): an AutoencoderKL directory puts the DiT in its latent
    # space, at resolution // the VAE's downscale; null trains in pixel space at `resolution`.
    vae_path: str | None = None
    # REPA's frozen encoder: a transformers Dinov2Model directory or a TorchScript file; null disables REPA.
    repa_encoder_path: str | None = None
    repa_weight: float = Field(0.5, ge=0)
    repa_layer: int | None = Field(None, ge=1)  # the block whose tokens REPA aligns; null: depth // 3 (at least 1)
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = "auto"  # auto: bf16-mixed on a GPU, else 32
    grad_checkpointing: bool = False  # recompute each block's activations in backward: less memory, ~30 % slower
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int = Field(1, ge=1)
    strategy: Literal["auto", "ddp"] = "auto"
    num_workers: int = Field(0, ge=0)
    # Sample grids of the EMA model, drawn with evaluate's sampler (EvaluateParams.sampling).
    sample_every_n_steps: int = Field(300, ge=1)
    sample_count: int = Field(4, ge=1)  # rows of each grid
    log_every_n_steps: int = Field(10, ge=1)
    checkpoint_every_n_steps: int = Field(100, ge=1)  # how much a kill -9 can cost

    @model_validator(mode="after")
    def _patches_tile_the_image(self):
        # In pixel space the DiT cuts `resolution` into patches; a latent model's grid depends on the VAE, which
        # the train stage checks when it loads it.
        if self.vae_path is None and self.resolution % self.model.patch_size:
            raise ValueError(f"resolution {self.resolution} must be a multiple of model.patch_size "
                             f"{self.model.patch_size}")
        return self


# --- evaluate / report -------------------------------------------------------------------------
class EvaluateParams(Section):
    seed: int = 0
    n_pairs: int = Field(32, ge=1)
    sample_steps: int = Field(25, ge=1)
    appearance_scale: float = Field(1.5, ge=0)
    pose_scale: float = Field(1.5, ge=0)
    eta: float = Field(0.0, ge=0, le=1)  # DDIM's η: 0 deterministic, 1 as stochastic as DDPM
    # Local LPIPS weights (nothing is downloaded), read by `evaluate.metrics.load_lpips`; null skips LPIPS.
    lpips_path: str | None = None
    # Local FID/KID feature extractor for `evaluate.metrics.load_feature_extractor`: an Inception-v3 state dict
    # (pytorch-fid's or torchvision's; the 192-channel features Pelykh uses), TorchScript or torch.export;
    # scored on the hand pixels only. null skips FID/KID.
    fid_extractor_path: str | None = None

    def sampling(self) -> dict:
        """The DDIM settings every sampler of a trained model takes (evaluate, the report, `handloom generate`)."""
        return dict(steps=self.sample_steps, appearance_scale=self.appearance_scale, pose_scale=self.pose_scale,
                    eta=self.eta)


class ReportParams(Section):
    grid_rows: int = Field(8, ge=1)


class Params(Section):
    ingest: IngestParams = IngestParams()
    annotate: AnnotateParams = AnnotateParams()
    shard: ShardParams = ShardParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    report: ReportParams = ReportParams()


class ParamsError(UserError, ValueError):
    """params.yaml does not validate; the message lists every offending key path."""


_MESSAGES = {
    "greater_than_equal": "must be ≥ {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be ≤ {le}",
    "less_than": "must be < {lt}",
    "extra_forbidden": "unknown key",
    "literal_error": "must be one of {expected}",
}


def _describe(error: dict) -> str:
    """`train.model.depth: must be ≥ 1` from one pydantic error."""
    path = ".".join(str(p) for p in error["loc"] if not str(p).startswith("function-"))
    template = _MESSAGES.get(error["type"])
    if error["type"] == "value_error":  # a validator's own sentence, without pydantic's "Value error, "
        message = str(error["ctx"]["error"])
    else:
        message = template.format(**error.get("ctx", {})) if template else error["msg"].lower()
    return f"{path}: {message}"


def parse_params(data: dict | None) -> Params:
    """Validate a params mapping; raise ParamsError naming every bad key path."""
    try:
        return Params.model_validate(data or {})
    except ValidationError as e:
        raise ParamsError("invalid params.yaml:\n  " + "\n  ".join(_describe(err) for err in e.errors())) from None


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping, as DVC does (PyYAML silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(text: str):
    """Parsed YAML, duplicate keys refused."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def one_line(error: yaml.YAMLError) -> str:
    """`duplicate key 'lr' (line 12, column 3)` rather than PyYAML's several lines."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    return " ".join(f"{problem}{where}".split())


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    try:
        data = read_yaml(Path(path).read_text())
    except yaml.YAMLError as e:
        raise ParamsError(f"invalid params.yaml: not YAML: {one_line(e)}") from None
    if data is not None and not isinstance(data, dict):
        raise ParamsError("invalid params.yaml: the top level must be a mapping of stage sections")
    return parse_params(data)


def stage_args(doc: str, *positionals: tuple[str, str]) -> argparse.Namespace:
    """A stage script's command line: `--help` prints its docstring and arguments and exits before any work."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Run from the project root; reads params.yaml (see dvc.yaml for its "
                                            "deps and outs). Normally run by `dvc repro`.")
    for name, help_text in positionals:
        parser.add_argument(name, help=help_text)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error (or set "
                        "HANDLOOM_DEBUG=1); expected errors are one line `error: ...` and exit code 2")
    return parser.parse_args()


def stage_params(path: str | Path = "params.yaml") -> Params:
    """For stage scripts: print the error and exit 2 before any work when params.yaml is bad."""
    try:
        return load_params(path)
    except (ParamsError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
