"""Training losses of the autodecoder.

- RGB: L1 + (1 - SSIM). The paper uses a pyramidal VGG-19 perceptual loss; ImageNet weights
  cannot be downloaded at run time here (REFERENCE.md sec. 5), so it runs only when the user
  gives a weights file, and L1 + SSIM carry the photometric signal otherwise.
- Occupancy: L1 between rendered opacity and the foreground mask, weight 10 (3DVADER sec. 3.1).
- Depth: L1 on pixels with a valid depth measurement inside the mask, in head-box units; our
  TrueDepth data has depth and it pins the density to the surface, which colour alone does not.
- Eikonal (distance grids only, :mod:`facestudio.models.geometry`): |grad d| = 1, so the grid
  stays a distance field and its zero crossing stays where trilinear interpolation puts it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from facestudio.models import distributed
from facestudio.models.config import LossConfig
from facestudio.models.geometry import eikonal_loss

log = logging.getLogger(__name__)

# torchvision's VGG-19 "features" layout: conv widths, "M" = max-pool. Keeping its indices lets a
# torchvision state dict load unchanged.
_VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]
_VGG_TAPS = (1, 6, 11, 20, 29)          # relu1_1 .. relu5_1
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity of (N, C, H, W) images in [0, 1] (Wang et al. 2004, Gaussian window)."""
    c = a.shape[1]
    x = torch.arange(window, dtype=a.dtype, device=a.device) - (window - 1) / 2
    g = torch.exp(-x * x / (2 * sigma * sigma))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, padding=window // 2, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.mean()


class VGG19Features(nn.Module):
    """VGG-19 up to relu5_1, built here because torchvision is not available; weights from a file."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in _VGG19:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, int(v), 3, padding=1), nn.ReLU(inplace=False)]
                c_in = int(v)
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    @classmethod
    def from_file(cls, path: str | Path) -> "VGG19Features":
        """Load a torchvision-layout state dict (``features.N.weight``); classifier keys are ignored."""
        path = Path(path).expanduser()
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if k.startswith("features.")}
        model = cls()
        missing, _ = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if k.startswith("features.")]
        if missing:
            raise ValueError(f"{path}: not a VGG-19 state dict (missing {missing[:3]} ...)")
        return model.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.mean) / self.std
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _VGG_TAPS:
                taps.append(x)
            if i >= _VGG_TAPS[-1]:
                break
        return taps


def perceptual_loss(vgg: VGG19Features, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pyramidal perceptual loss: L1 of relu1_1..relu5_1 features at scales 1, 1/2, 1/4 (paper).

    Scales below 16 px are skipped: relu5_1 sits after four 2x poolings.
    """
    total = pred.new_zeros(())
    for scale in (s for s in (1.0, 0.5, 0.25) if min(pred.shape[-2:]) * s >= 16):
        p = pred if scale == 1.0 else F.interpolate(pred, scale_factor=scale, mode="bilinear", antialias=True)
        t = target if scale == 1.0 else F.interpolate(target, scale_factor=scale, mode="bilinear", antialias=True)
        for fp, ft in zip(vgg(p), vgg(t)):
            total = total + (fp - ft).abs().mean()
    return total


class AutodecoderLoss(nn.Module):
    """Weighted sum of the terms above; returns the total and each term for the metrics log."""

    def __init__(self, cfg: LossConfig, geometry: str = "density") -> None:
        super().__init__()
        self.cfg = cfg
        self.distance_grids = geometry == "sdf"
        self.vgg: VGG19Features | None = None
        if cfg.vgg19_weights and cfg.perceptual > 0:
            self.vgg = VGG19Features.from_file(cfg.vgg19_weights)
            log.info("perceptual loss: VGG-19 weights from %s", cfg.vgg19_weights)
        else:
            log.info("perceptual loss off (no VGG-19 weights file given); using L1 + SSIM")

    def forward(self, out: dict[str, torch.Tensor], target_rgb: torch.Tensor, mask: torch.Tensor,
                depth: torch.Tensor, box_size: float, grids: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, float]]:
        """out: rendered images rgb (N, H, W, 3), opacity/depth (N, H, W); targets alike.

        ``target_rgb`` is already composited over the render background outside ``mask``;
        ``grids`` (B, 4, R, R, R) are the rendered grids, for the eikonal term of distance grids.
        """
        c = self.cfg
        pred = out["rgb"].permute(0, 3, 1, 2)
        tgt = target_rgb.permute(0, 3, 1, 2)
        terms: dict[str, torch.Tensor] = {"rgb_l1": (pred - tgt).abs().mean()}
        if c.ssim > 0:
            terms["ssim"] = 1.0 - ssim(pred, tgt)
        terms["occupancy"] = (out["opacity"] - mask.to(pred.dtype)).abs().mean()
        if c.depth > 0:
            # Over the valid pixels of every process's batch: their count differs between processes.
            depth_error = distributed.global_mean((out["depth"] - depth).abs()[mask & (depth > 0)])
            if depth_error is not None:
                terms["depth"] = depth_error / box_size
        if self.vgg is not None:
            terms["perceptual"] = perceptual_loss(self.vgg, pred, tgt)
        if self.distance_grids and grids is not None and c.eikonal > 0:
            terms["eikonal"] = eikonal_loss(grids)
        weights = {"rgb_l1": c.rgb_l1, "ssim": c.ssim, "occupancy": c.occupancy, "depth": c.depth,
                   "perceptual": c.perceptual, "eikonal": c.eikonal}
        total = sum(weights[k] * v for k, v in terms.items())
        return total, {k: float(v.detach()) for k, v in terms.items()}
