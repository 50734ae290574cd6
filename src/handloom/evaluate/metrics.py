"""Metrics with known answers for generated hands: image (PSNR, SSIM, LPIPS, FID/KID), keypoint (MPJPE, PCK, DAP,
joint ratios) and mask (IoU)."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure
from torchvision.models import AlexNet
from torchvision.models.inception import BasicConv2d
from torchvision.models.vgg import cfgs, make_layers


# --- Images: (N, C, H, W) tensors, one value per image -------------------------------------------
def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float) -> torch.Tensor:
    """(N,) peak signal-to-noise ratio in dB; identical images give inf."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float) -> torch.Tensor:
    """(N,) structural similarity (Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03); identical images give 1."""
    return structural_similarity_index_measure(a.double(), b.double(), data_range=data_range, reduction="none")


# --- Masks ---------------------------------------------------------------------------------------
def mask_iou(pred_mask: np.ndarray, gt_mask: np.ndarray) -> np.ndarray:
    """(...) IoU over the last two axes; masks are bool, 0/1, probabilities or 0/255 (> 0.5 is hand).

    Two empty masks agree perfectly, so their IoU is 1.
    """
    p, g = np.asarray(pred_mask) > 0.5, np.asarray(gt_mask) > 0.5
    inter, union = (p & g).sum((-2, -1)), (p | g).sum((-2, -1))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


# --- Distribution metrics on features ------------------------------------------------------------
def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between Gaussians fitted to two (N, D) feature sets."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    cov_r, cov_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    # tr sqrt(cov_r cov_f) = tr sqrt(S cov_f S) with S = sqrt(cov_r): symmetric, so eigh is stable.
    w, v = np.linalg.eigh(cov_r)
    s = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(s @ cov_f @ s), 0, None)).sum()
    mean_term = np.sum((real.mean(0) - fake.mean(0)) ** 2)
    return float(mean_term + np.trace(cov_r) + np.trace(cov_f) - 2 * trace_sqrt)


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, subset_size: int, subsets: int = 100,
                              seed: int = 0) -> tuple[float, float]:
    """KID (mean, std): unbiased MMD^2 with the cubic kernel (x.y/d + 1)^3 over random subsets.

    The subset size is capped at the smaller set, so small evaluation runs still give a value.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    m, d = min(subset_size, len(real), len(fake)), real.shape[1]
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(subsets):
        x, y = real[rng.choice(len(real), m, replace=False)], fake[rng.choice(len(fake), m, replace=False)]
        kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        scores.append(within - 2 * kxy.mean())
    return float(np.mean(scores)), float(np.std(scores))


def fid_kid(real_features: np.ndarray, fake_features: np.ndarray, kid_subset_size: int = 1000) -> dict[str, float]:
    """FID and KID from (N, D) feature arrays (Pelykh: Inception dim 192 on the foreground)."""
    kid_mean, kid_std = kernel_inception_distance(real_features, fake_features, kid_subset_size)
    return {"fid": frechet_distance(real_features, fake_features), "kid_mean": kid_mean, "kid_std": kid_std}


class Inception192(nn.Module):
    """Inception-v3 up to its 192-channel block, average-pooled: pytorch-fid's `dims=192` feature.

    Layer names match torchvision's Inception3 and pytorch-fid's FID Inception, so either's state
    dict loads into it. Takes RGB in [0, 1] at any size (resized to 299, as those do).
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1  # (N, 3, 299, 299)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (N, 64, 147, 147)
        x = F.max_pool2d(x, kernel_size=3, stride=2)                        # (N, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))                       # (N, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)                        # (N, 192, 35, 35)
        return x.mean((2, 3))                                               # (N, 192)


def _archive_kind(path: Path) -> str:
    """'torchscript', 'export' or 'state_dict', from the members each torch writer puts in its zip."""
    names = zipfile.ZipFile(path).namelist() if zipfile.is_zipfile(path) else []
    if any(n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("/archive_format") for n in names):
        return "export"
    return "state_dict"


def load_feature_extractor(path: str | Path, module: nn.Module | None = None) -> nn.Module:
    """A feature extractor from a local file, ready for inference; nothing is ever downloaded.

    A TorchScript archive (torch.jit.save) or a torch.export archive (torch.export.save, export it
    with a dynamic batch dimension) loads as is. Anything else is a state dict, read with
    weights_only=True into `module` (default Inception192); keys the module lacks (e.g. the rest
    of a full Inception-v3 checkpoint) are ignored, keys it needs must all be there.
    """
    path = Path(path)
    kind = _archive_kind(path)
    if kind == "torchscript":
        return torch.jit.load(str(path), map_location="cpu").eval()
    if kind == "export":
        return torch.export.load(path).module()  # a graph traced in eval mode already; it refuses .eval()
    module = Inception192() if module is None else module
    state = torch.load(path, map_location="cpu", weights_only=True)
    wanted = module.state_dict()
    module.load_state_dict({k: v for k, v in state.items() if k in wanted})
    return module.eval()


def extract_features(extractor: nn.Module, images: torch.Tensor, foreground_masks: torch.Tensor | None = None,
                     batch_size: int = 64) -> np.ndarray:
    """(N, D) float64 features of (N, 3, H, W) images, in the range the extractor expects ([0, 1] for Inception192).

    With foreground masks ((N, H, W) or (N, 1, H, W); > 0.5 is hand) the background is set to 0 first, so the
    features (and FID/KID) describe the hands only, as Pelykh evaluates.
    """
    device = next(iter(extractor.parameters()), torch.empty(0)).device
    features = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].to(device, torch.float32)
            if foreground_masks is not None:
                m = foreground_masks[i:i + batch_size].to(device) > 0.5  # same reading of a mask as mask_iou
                x = x * (m if m.dim() == 4 else m[:, None])
            out = extractor(x)
            out = out[0] if isinstance(out, (tuple, list)) else out  # some extractors return (features, ...)
            features.append(out.flatten(1).double().cpu().numpy())
    return np.concatenate(features) if features else np.zeros((0, 0))


# --- LPIPS (Zhang et al. 2018) -------------------------------------------------------------------
# The files of an LPIPS weights directory: the backbone (.pt2 when torch.export wrote it, as torch.export.load
# expects) and the linear layers.
LPIPS_BACKBONES, LPIPS_LINEAR = ("backbone.pt2", "backbone.pt"), "linear.pth"
# The lpips package's ScalingLayer: images in [-1, 1] to ImageNet's normalisation.
LPIPS_SHIFT, LPIPS_SCALE = (-0.030, -0.088, -0.188), (0.458, 0.448, 0.450)
LPIPS_EPS = 1e-10  # the lpips package's normalize_tensor epsilon
# torchvision feature stacks that LPIPS taps (the lpips package's slices end at these ReLUs), keyed by the
# channel widths of their layers, which the linear weights reveal.
LPIPS_TORCHVISION = {(64, 128, 256, 512, 512): ("vgg16", (3, 8, 15, 22, 29)),
                     (64, 192, 384, 256, 256): ("alexnet", (1, 4, 7, 9, 11))}


class TorchvisionTaps(nn.Module):
    """A torchvision vgg16 / alexnet `features` stack returning the ReLU outputs LPIPS compares.

    The attribute is named `features` so torchvision's own checkpoint keys (`features.0.weight`, ...) load as is.
    """

    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        if widths not in LPIPS_TORCHVISION:
            raise ValueError(f"LPIPS linear layers of widths {widths} match no torchvision backbone "
                             f"({', '.join(f'{n}: {w}' for w, (n, _) in LPIPS_TORCHVISION.items())})")
        name, self.taps = LPIPS_TORCHVISION[widths]
        self.features = make_layers(cfgs["D"]) if name == "vgg16" else AlexNet().features

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features[:self.taps[-1] + 1]):
            x = layer(x)
            if i in self.taps:
                out.append(x)  # (N, C_l, H_l, W_l); the next layer is a pool or conv, so in-place ReLUs spare it
        return out


class LPIPS(nn.Module):
    """Learned perceptual distance: sum over layers l of mean_hw( w_l . (f0_l - f1_l)^2 ), f unit-normalised.

    `backbone` maps ImageNet-normalised images to a list of per-layer features (N, C_l, H_l, W_l); `linear` is the
    (C_l,) non-negative channel weights of each layer (the lpips package's 1x1 convolutions, without bias).
    """

    def __init__(self, backbone: nn.Module, linear: list[torch.Tensor]):
        super().__init__()
        self.backbone = backbone
        self.linear = nn.ParameterList([nn.Parameter(w.flatten().float(), requires_grad=False) for w in linear])
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(N,) distances between (N, 3, H, W) images in [-1, 1]."""
        fa, fb = (self.backbone((x.float() - self.shift) / self.scale) for x in (a, b))
        distance = torch.zeros(len(a), device=a.device)
        for ya, yb, w in zip(fa, fb, self.linear, strict=True):
            ua = ya / (ya.norm(dim=1, keepdim=True) + LPIPS_EPS)  # (N, C, H, W), unit length over channels
            ub = yb / (yb.norm(dim=1, keepdim=True) + LPIPS_EPS)
            distance += torch.einsum("nchw,c->nhw", (ua - ub) ** 2, w).mean((1, 2))
        return distance


def _lpips_linear(state: dict) -> list[torch.Tensor]:
    """The lpips package's `lin<l>.model.1.weight` (1, C_l, 1, 1) tensors, in layer order, checked non-negative."""
    keys = sorted((k for k in state if k.startswith("lin") and k.endswith(".weight")),
                  key=lambda k: int(k[3:].split(".")[0]))
    if not keys:
        raise ValueError("no LPIPS linear weights (lin0.model.1.weight, ...) in the file")
    if any((state[k] < 0).any() for k in keys):
        raise ValueError("LPIPS linear weights must be non-negative (they weight squared differences)")
    return [state[k] for k in keys]


def load_lpips(path: str | Path) -> LPIPS:
    """LPIPS from local weights; nothing is ever downloaded. `path` is one of:

    - a directory with `backbone.pt` (what `load_feature_extractor` reads: a TorchScript archive returning the
      list of per-layer features, or a torchvision vgg16 / alexnet state dict such as torchvision's own
      `vgg16-397923af.pth`), or `backbone.pt2` (a torch.export archive, dynamic batch dimension), and
      `linear.pth` (the lpips package's `weights/v0.1/vgg.pth` or `alex.pth`: `lin<l>.model.1.weight` tensors
      of shape (1, C_l, 1, 1));
    - one state-dict file holding both, e.g. `torch.save({**vgg16_state_dict, **lpips_vgg_pth}, path)`.

    A state-dict backbone is vgg16 or alexnet, told apart by the linear layers' widths. Images are
    ImageNet-normalised (the lpips package's ScalingLayer) before any backbone sees them.
    """
    path = Path(path)
    backbone_path, linear_path = path, path
    if path.is_dir():
        backbone_path = next((path / n for n in LPIPS_BACKBONES if (path / n).exists()), path / LPIPS_BACKBONES[-1])
        linear_path = path / LPIPS_LINEAR
    linear = _lpips_linear(torch.load(linear_path, map_location="cpu", weights_only=True))
    is_state_dict = _archive_kind(backbone_path) == "state_dict"
    module = TorchvisionTaps(tuple(w.shape[1] for w in linear)) if is_state_dict else None
    # The backbone comes back in inference mode and LPIPS adds no train-time layers; no .eval() here, as an
    # exported backbone refuses it.
    return LPIPS(load_feature_extractor(backbone_path, module), linear)


def lpips(model: LPIPS, a: torch.Tensor, b: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """(N,) LPIPS of (N, 3, H, W) image pairs in [-1, 1]; identical images give exactly 0."""
    device = next(iter(model.parameters())).device
    with torch.inference_mode():
        return torch.cat([model(a[i:i + batch_size].to(device), b[i:i + batch_size].to(device)).cpu()
                          for i in range(0, len(a), batch_size)]) if len(a) else torch.zeros(0)
