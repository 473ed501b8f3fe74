"""The stage-1 autodecoder of "Autodecoding Latent 3D Diffusion Models" (3DVADER, sec. 3.1).

Each training object (a fused face segment) owns a learned embedding. A fully connected layer
turns it into a 4^3 volume; residual 3D up-blocks (nearest 2x, 3^3 convs, norm, ReLU, 1x1x1
skip) double the resolution per level, with self-attention at the coarse levels. G1 runs up to
the 8^3 latent volume, where the diffusion model of stage 2 operates; G2 decodes that latent
to a voxel radiance field: 1 geometry channel (a density as in the paper, or a signed distance:
:mod:`facestudio.models.geometry`) + 3 RGB channels, read by trilinear interpolation
(:mod:`facestudio.models.render`) - no MLP, which is what makes the latent a complete 3D
description.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from facestudio.models.config import ModelConfig
from facestudio.models.geometry import make_geometry, sphere_prior


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock3d(nn.Module):
    """norm-ReLU-conv3^3 twice plus a 1x1x1 skip; optionally nearest-upsamples 2x first."""

    def __init__(self, c_in: int, c_out: int, norm: str, upsample: bool) -> None:
        super().__init__()
        self.upsample = upsample
        self.norm1, self.conv1 = _norm(norm, c_in), nn.Conv3d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = _norm(norm, c_out), nn.Conv3d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        h = self.conv1(F.relu(self.norm1(x)))
        h = self.conv2(F.relu(self.norm2(h)))
        return self.skip(x) + h


class SelfAttention3d(nn.Module):
    """Multi-head self-attention over all voxels of a coarse volume (8^3 = 512 tokens), residual."""

    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        self.norm = _norm(norm, channels)
        self.attn = nn.MultiheadAttention(channels, max(1, channels // 64), batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        out, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, d, h, w)


def _level(c_in: int, c_out: int, blocks: int, norm: str, upsample: bool, attention: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(blocks):
        layers.append(ResBlock3d(c_in if i == 0 else c_out, c_out, norm, upsample and i == 0))
        if attention:
            layers.append(SelfAttention3d(c_out, norm))
    return nn.Sequential(*layers)


class G1(nn.Module):
    """Embedding -> FC -> 4^3 volume -> levels up to the latent resolution (8^3 in the paper)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        ch = cfg.channels
        self.c0 = ch[0]
        self.fc = nn.Linear(cfg.embedding_dim, ch[0] * 64)
        n = cfg.latent_resolution.bit_length() - 2   # levels 4..latent
        self.levels = nn.Sequential(*[
            _level(ch[max(i - 1, 0)], ch[i], cfg.blocks_per_level, cfg.norm, i > 0,
                   4 * 2 ** i in cfg.attention_resolutions) for i in range(n)])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.levels(self.fc(z).view(-1, self.c0, 4, 4, 4))


class LinearFieldDecoder(nn.Module):
    """Latent (C, R, R, R) -> field (3, sR, sR, sR): one transposed convolution (kernel 2s, stride s),
    each latent voxel's C values the weights of C learned basis fields over its neighbourhood.

    Why linear for deformation fields: stage 2 then works in a space where a sum or difference of
    latents decodes to the sum or difference of their fields. The diffusion model's linear
    expression mean (denoiser.ExpressionMean) is then a linear blendshape model *of the fields*,
    the change sample(expression) - sample(neutral) decodes to exactly the field difference, and
    nothing that G1 learned is lost: it still maps each code to its latent through its
    non-linear levels. Measured (BENCHMARKS.md, issue 14), on the same targets and 5 minutes of a
    2-core CPU: decoded expression error 0.199 mm against the convolutional G2's 0.228 (8,772 steps
    against 4,900: the 16^3 level was most of a step's time). The output resolution is the
    configured one; the levels past the latent are not built.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        scale = cfg.output_resolution // cfg.latent_resolution
        self.net = nn.ConvTranspose3d(cfg.latent_channels, 3, kernel_size=2 * scale, stride=scale,
                                      padding=scale // 2)
        with torch.no_grad():   # a field starts as (almost) no motion
            self.net.weight.mul_(0.1)
            self.net.bias.zero_()

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net(latent)


class G2(nn.Module):
    """Latent volume -> remaining up-levels -> (geometry, R, G, B) grid at the output resolution,
    or, for ``model.output = "deformation"``, a (dx, dy, dz) displacement grid in centimetres
    (:mod:`facestudio.models.deformation`).

    A distance grid is predicted as an offset from a sphere (:func:`sphere_prior`); a density grid
    starts nearly empty (``density_bias``), as NeRF-style grids do.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        ch = cfg.channels
        first = cfg.latent_resolution.bit_length() - 2
        self.levels = nn.Sequential(*[
            _level(ch[i - 1], ch[i], cfg.blocks_per_level, cfg.norm, True,
                   4 * 2 ** i in cfg.attention_resolutions) for i in range(first, len(ch))])
        self.out_norm = _norm(cfg.norm, ch[-1])
        self.shuffle = cfg.output_shuffle
        self.out = nn.Conv3d(ch[-1], cfg.output_channels * self.shuffle ** 3, 1)
        sdf = cfg.geometry == "sdf" and cfg.output == "radiance"
        with torch.no_grad():
            if cfg.output == "radiance":
                self.out.bias.copy_(torch.tensor([0.0 if sdf else cfg.density_bias, 0.0, 0.0, 0.0]))
            else:   # a field starts as no motion
                self.out.weight.mul_(0.1)
                self.out.bias.zero_()
        self.register_buffer("prior", sphere_prior(cfg.output_resolution) if sdf else None, persistent=False)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        grid = self.out(F.relu(self.out_norm(self.levels(latent))))
        if self.shuffle > 1:
            grid = voxel_shuffle(grid, self.shuffle)
        if self.prior is None:
            return grid
        return torch.cat([grid[:, :1] + self.prior.to(grid.dtype), grid[:, 1:]], dim=1)


def voxel_shuffle(x: torch.Tensor, r: int) -> torch.Tensor:
    """(B, C r^3, D, H, W) -> (B, C, rD, rH, rW), the 3D pixel shuffle: a smooth field at 32^3 for
    the cost of convolutions at 16^3 (the last level dominates a decoder's time)."""
    b, c, d, h, w = x.shape
    c //= r ** 3
    x = x.view(b, c, r, r, r, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, c, d * r, h * r, w * r)


class Autodecoder(nn.Module):
    """Per-object embeddings, the G1/G2 decoder and the geometry that gives its grids' first channel
    a meaning (with the distance field's learned sharpness). Grids are (B, 4, D=z, H=y, W=x), raw."""

    def __init__(self, cfg: ModelConfig, num_objects: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = nn.Embedding(num_objects, cfg.embedding_dim)
        # Small codes, as in DeepSDF-style autodecoders: every object starts near the mean shape.
        nn.init.normal_(self.embeddings.weight, std=0.01)
        self.g1 = G1(cfg)
        self.g2 = LinearFieldDecoder(cfg) if cfg.field_decoder == "linear" else G2(cfg)
        self.geometry = make_geometry(cfg.geometry)

    def decoder_parameters(self) -> list[nn.Parameter]:
        return [*self.g1.parameters(), *self.g2.parameters(), *self.geometry.parameters()]

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.decode(self.embeddings(index))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.g2(self.g1(z))


def rgb_from_raw(raw: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(raw)
