"""The conditional 3D U-Net F of the diffusion stage (3DVADER sec. 3.2, REFERENCE.md sec. 1).

ADM (Dhariwal & Nichol 2021) made 3D: residual blocks (GroupNorm, SiLU, 3^3 convs) whose second
norm is modulated by the noise embedding (scale-shift), self-attention over the voxels at the
attention resolutions and in the middle, strided-conv down / nearest+conv up, skip concatenation.
Conditioning enters LDM-style (Rombach et al. 2022): a transformer block after each attended
residual block runs self-attention, cross-attention to the conditioning tokens, and an MLP.
Cross-attention takes a key-padding mask (True = token present); a learned null token is always
present, so a sample whose conditions are all dropped still has a well-defined softmax - that
null-only context *is* the unconditional model used by classifier-free guidance.

Levels: ``resolution`` (8^3) and each halving after it (``channel_mult`` = [1, 2]: 8^3, 4^3).
The output convolution and every residual branch's last layer (ResBlock conv2, transformer
proj_out) start at zero (ADM/LDM), so the untrained F outputs 0, D starts at c_skip * x, and
every block starts as the identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class UNet3DConfig:
    """U-Net shape; plain types so it round-trips through TOML (see models.config helpers)."""

    in_channels: int = 64               # latent channels of the autodecoder (tiny 64, paper 256)
    resolution: int = 8                 # latent side (the paper's 8^3)
    model_channels: int = 32            # base width (paper 128-192)
    channel_mult: list[int] = field(default_factory=lambda: [1, 2])   # per level: 8^3, 4^3
    num_blocks: int = 2                 # residual blocks per level on the way down (paper 2-3)
    attention_resolutions: list[int] = field(default_factory=lambda: [8, 4])
    head_channels: int = 32             # channels per attention head
    context_dim: int = 128              # width D of the conditioning tokens
    dropout: float = 0.0

    def validate(self) -> "UNet3DConfig":
        res = [self.resolution >> i for i in range(len(self.channel_mult))]
        checks = [
            (self.in_channels >= 1, "in_channels", "must be >= 1"),
            (len(self.channel_mult) >= 1 and self.resolution % 2 ** (len(self.channel_mult) - 1) == 0,
             "channel_mult", f"{len(self.channel_mult)} levels do not divide resolution {self.resolution}"),
            (all(m >= 1 for m in self.channel_mult), "channel_mult", "entries must be >= 1"),
            (self.num_blocks >= 1, "num_blocks", "must be >= 1"),
            (all(r in res for r in self.attention_resolutions), "attention_resolutions",
             f"entries must be among {res}"),
            (self.model_channels >= 1, "model_channels", "must be >= 1"),
            (self.head_channels >= 1 and all(self.model_channels * m % self.head_channels == 0
                                             for m in self.channel_mult),
             "head_channels", "must divide every level's width"),
            (self.context_dim >= 1, "context_dim", "must be >= 1"),
            (0 <= self.dropout < 1, "dropout", "must be in [0, 1)"),
        ]
        for ok, key, msg in checks:
            if not ok:
                raise ValueError(f"unet.{key}: {msg}")
        return self


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class FourierEmbedding(nn.Module):
    """Random Fourier features of c_noise (NCSN++/EDM style, frequencies ~ N(0, 16^2)).

    c_noise = ln(sigma)/4 spans only about [-1.6, 1.1]; high random frequencies make the
    features vary over that narrow range, where ADM's positional table (built for t in 0..1000)
    would be nearly constant. The frequencies are a buffer, saved with the model.
    """

    def __init__(self, channels: int, scale: float = 16.0) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.randn(channels // 2) * scale)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        x = c_noise.float()[:, None] * (2 * math.pi * self.freqs)
        return torch.cat([x.cos(), x.sin()], dim=1)


class ResBlock(nn.Module):
    """GN-SiLU-conv, GN with noise scale-shift (ADM use_scale_shift_norm), SiLU-dropout-conv, skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv3d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2, self.drop = _norm(c_out), nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv3d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv3d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(self.drop(F.silu(h)))


class Attention(nn.Module):
    """Multi-head attention of queries ``x`` (B, N, C) to ``context`` (B, T, Dc); mask (B, T) True = attend."""

    def __init__(self, dim: int, context_dim: int, head_channels: int) -> None:
        super().__init__()
        self.heads = dim // head_channels
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(context_dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[:, None, None, :])
        return self.out(o.transpose(1, 2).reshape(b, n, c))


class SpatialTransformer3d(nn.Module):
    """LDM's spatial transformer on a volume: voxels as tokens; self-attn, cross-attn, MLP; residual."""

    def __init__(self, channels: int, context_dim: int, head_channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.proj_in = nn.Linear(channels, channels)
        self.ln1, self.self_attn = nn.LayerNorm(channels), Attention(channels, channels, head_channels)
        self.ln2, self.cross_attn = nn.LayerNorm(channels), Attention(channels, context_dim, head_channels)
        self.ln3 = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, 4 * channels), nn.GELU(), nn.Linear(4 * channels, channels))
        self.proj_out = _zero(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, c, d, h, w = x.shape
        t = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))
        y = self.ln1(t)
        t = t + self.self_attn(y, y)
        t = t + self.cross_attn(self.ln2(t), context, mask)
        t = t + self.mlp(self.ln3(t))
        return x + self.proj_out(t).transpose(1, 2).reshape(b, c, d, h, w)


class Block(nn.Module):
    """One U-Net unit: a residual block, then (at attention resolutions) a spatial transformer."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, attention: bool, cfg: UNet3DConfig) -> None:
        super().__init__()
        self.res = ResBlock(c_in, c_out, emb_dim, cfg.dropout)
        self.attn = SpatialTransformer3d(c_out, cfg.context_dim, cfg.head_channels) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        return x if self.attn is None else self.attn(x, context, mask)


class Downsample(nn.Sequential):
    def __init__(self, channels: int) -> None:
        super().__init__(nn.Conv3d(channels, channels, 3, stride=2, padding=1))


class Upsample(nn.Sequential):
    def __init__(self, channels: int) -> None:
        super().__init__(nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv3d(channels, channels, 3, padding=1))


class UNet3D(nn.Module):
    """F(x, c_noise, context, mask, volume) -> same shape as x (B, in_channels, R, R, R).

    ``context`` (B, T, context_dim) with ``mask`` (B, T) bool (True = present); either may be
    None (no tokens / all present). The learned null token is prepended to every context.
    ``volume`` (B, volume_channels, R, R, R) is a spatially aligned condition concatenated to
    the input (after EDM's c_in scaling, which applies to the noisy latent only).
    """

    def __init__(self, cfg: UNet3DConfig, volume_channels: int = 0) -> None:
        super().__init__()
        cfg.validate()
        self.cfg, self.volume_channels = cfg, volume_channels
        c0, emb_dim = cfg.model_channels, 4 * cfg.model_channels
        self.fourier = FourierEmbedding(c0)
        self.map_noise = nn.Sequential(nn.Linear(c0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.null_token = nn.Parameter(torch.randn(1, 1, cfg.context_dim) * 0.02)
        self.conv_in = nn.Conv3d(cfg.in_channels + volume_channels, c0, 3, padding=1)

        ch, skips = c0, [c0]
        self.down = nn.ModuleList()
        for level, mult in enumerate(cfg.channel_mult):
            attention = (cfg.resolution >> level) in cfg.attention_resolutions
            for _ in range(cfg.num_blocks):
                self.down.append(Block(ch, c0 * mult, emb_dim, attention, cfg))
                ch = c0 * mult
                skips.append(ch)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(Downsample(ch))
                skips.append(ch)
        self.mid = nn.ModuleList([Block(ch, ch, emb_dim, True, cfg), Block(ch, ch, emb_dim, False, cfg)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            attention = (cfg.resolution >> level) in cfg.attention_resolutions
            for _ in range(cfg.num_blocks + 1):
                self.up.append(Block(ch + skips.pop(), c0 * mult, emb_dim, attention, cfg))
                ch = c0 * mult
            if level > 0:
                self.up.append(Upsample(ch))
        self.norm_out = _norm(ch)
        self.conv_out = _zero(nn.Conv3d(ch, cfg.in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, volume: torch.Tensor | None = None) -> torch.Tensor:
        b = x.shape[0]
        emb = self.map_noise(self.fourier(c_noise.expand(b)).to(x.dtype))
        null = self.null_token.to(x.dtype).expand(b, 1, -1)
        if context is None:
            context = x.new_zeros(b, 0, self.cfg.context_dim)
        if mask is None:
            mask = torch.ones(context.shape[:2], dtype=torch.bool, device=x.device)
        context = torch.cat([null, context], dim=1)
        mask = torch.cat([mask.new_ones(b, 1), mask], dim=1)

        if self.volume_channels:
            if volume is None or volume.shape[1] != self.volume_channels:
                raise ValueError(f"this U-Net needs a {self.volume_channels}-channel condition volume")
            x = torch.cat([x, volume.to(x.dtype)], dim=1)
        h = self.conv_in(x)
        skips = [h]
        for m in self.down:
            h = m(h, emb, context, mask) if isinstance(m, Block) else m(h)
            skips.append(h)
        for m in self.mid:
            h = m(h, emb, context, mask)
        for m in self.up:
            h = m(torch.cat([h, skips.pop()], dim=1), emb, context, mask) if isinstance(m, Block) else m(h)
        return self.conv_out(F.silu(self.norm_out(h)))
