"""Conditioning encoders: ARKit blendshapes and the person's neutral latent -> cross-attention tokens.

Both encoders return ``(tokens, mask)``: tokens (B, K, D) and a bool key-padding mask (B, K),
True = present. Classifier-free guidance drops a condition by clearing its mask (the U-Net's
null token then carries the softmax), never by zeroing the inputs: a zero blendshape vector is
the *neutral expression*, a real condition, and must stay distinguishable from "no condition".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from facestudio.faces.arkit import BLENDSHAPE_INDEX, NUM_BLENDSHAPES

# Facial regions of the 52 ARKit blendshapes (each exactly once). "Left"/"Right" are the face's sides.
REGIONS: dict[str, tuple[str, ...]] = {
    "eye_left": ("eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft",
                 "eyeSquintLeft", "eyeWideLeft"),
    "eye_right": ("eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
                  "eyeSquintRight", "eyeWideRight"),
    "brow": ("browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight"),
    "cheek_nose": ("cheekPuff", "cheekSquintLeft", "cheekSquintRight", "noseSneerLeft", "noseSneerRight"),
    "jaw": ("jawForward", "jawLeft", "jawRight", "jawOpen"),
    "mouth": ("mouthClose", "mouthFunnel", "mouthPucker", "mouthLeft", "mouthRight", "mouthRollLower",
              "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "tongueOut"),
    "mouth_left": ("mouthSmileLeft", "mouthFrownLeft", "mouthDimpleLeft", "mouthStretchLeft", "mouthPressLeft",
                   "mouthLowerDownLeft", "mouthUpperUpLeft"),
    "mouth_right": ("mouthSmileRight", "mouthFrownRight", "mouthDimpleRight", "mouthStretchRight",
                    "mouthPressRight", "mouthLowerDownRight", "mouthUpperUpRight"),
}
EXPRESSION_TOKENS = len(REGIONS) + 1     # one per region plus one global token


@dataclass
class ConditioningConfig:
    expression_hidden: int = 128        # hidden width of each region's MLP
    identity_channels: int = 64         # width of the identity conv net
    identity_patch: int = 2             # 8^3 latent / 2^3 patches = 4^3 = 64 identity tokens
    identity_volume: bool = False       # also feed the identity as input channels (presets: on)
    identity_input_channels: int = 0    # channels of the identity input; 0 = the latent's (radiance runs)

    def validate(self) -> "ConditioningConfig":
        if self.expression_hidden < 1 or self.identity_channels < 1:
            raise ValueError("conditioning: expression_hidden and identity_channels must be >= 1")
        if self.identity_patch < 1:
            raise ValueError("conditioning.identity_patch: must be >= 1")
        if self.identity_input_channels < 0:
            raise ValueError("conditioning.identity_input_channels: must be >= 0")
        return self


def _mask(tokens: torch.Tensor, drop: torch.Tensor | None) -> torch.Tensor:
    b, k = tokens.shape[:2]
    present = torch.ones(b, dtype=torch.bool, device=tokens.device) if drop is None else ~drop.to(tokens.device)
    return present[:, None].expand(b, k)


class ExpressionEncoder(nn.Module):
    """52 blendshape weights -> 9 tokens: one per facial region (8) and one global.

    Why regions rather than one token per blendshape or one MLP to K anonymous tokens: each
    region's MLP sees only its own weights, so it models the couplings that act together
    (left/right eye lids, the mouth-corner shapes) while keeping tokens *spatially meaningful* -
    voxels around the mouth can attend to the mouth tokens, and an expression change in one
    region changes only that token (plus the global one), which keeps nearby expressions
    nearby. The global token (an MLP of all 52) carries whole-face couplings (surprise = brows
    + eyes + jaw). 9 tokens instead of 52 keeps cross-attention cheap. The region MLPs run as
    one batched einsum over masked weights.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        groups = [*REGIONS.values(), tuple(BLENDSHAPE_INDEX)]
        select = torch.zeros(len(groups), NUM_BLENDSHAPES)
        for g, names in enumerate(groups):
            select[g, [BLENDSHAPE_INDEX[n] for n in names]] = 1.0
        self.register_buffer("select", select, persistent=False)
        fan_in = select.sum(1)[:, None, None]
        self.w1 = nn.Parameter(torch.randn(len(groups), NUM_BLENDSHAPES, hidden) / fan_in.sqrt())
        self.b1 = nn.Parameter(torch.zeros(len(groups), hidden))
        self.w2 = nn.Parameter(torch.randn(len(groups), hidden, dim) / math.sqrt(hidden))
        self.b2 = nn.Parameter(torch.randn(len(groups), dim) * 0.02)   # doubles as the region's identity
        self.norm = nn.LayerNorm(dim)

    def forward(self, blendshapes: torch.Tensor, drop: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.silu(torch.einsum("bn,gnh->bgh", blendshapes, self.w1 * self.select[:, :, None]) + self.b1)
        tokens = self.norm(torch.einsum("bgh,ghd->bgd", h, self.w2) + self.b2)
        return tokens, _mask(tokens, drop)


class IdentityEncoder(nn.Module):
    """Neutral latent (C, R, R, R) -> (R/patch)^3 tokens (64 for 8^3 with 2^3 patches).

    The neutral latent is the person's full 3D description in the same (robust-normalised)
    space the diffusion model denoises, so no separate 3DMM fit is needed and a new person costs
    one autodecoder fit. Tokens keep the spatial layout (a learned position embedding per patch),
    so a voxel of the generated face can read the neutral geometry at its own location, which
    a few pooled tokens would blur; 2^3 patches keep cross-attention at 8^3 at 512 x 64.
    """

    def __init__(self, in_channels: int, dim: int, channels: int, patch: int = 2, resolution: int = 8) -> None:
        super().__init__()
        g = math.gcd(32, channels)
        self.net = nn.Sequential(
            nn.Conv3d(in_channels, channels, 3, padding=1), nn.GroupNorm(g, channels), nn.SiLU(),
            nn.Conv3d(channels, channels, 3, padding=1), nn.GroupNorm(g, channels), nn.SiLU(),
            nn.Conv3d(channels, dim, patch, stride=patch))
        self.pos = nn.Parameter(torch.randn(1, (resolution // patch) ** 3, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)

    def forward(self, latent: torch.Tensor, drop: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.norm(self.net(latent).flatten(2).transpose(1, 2) + self.pos)
        return tokens, _mask(tokens, drop)


def identity_volume(latent: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
    """The neutral latent as U-Net input channels (C + 1, R, R, R): the latent, zeroed when dropped,
    plus a presence channel - zeros alone would be a real (if odd) latent, not "no identity".

    Why both this and the identity tokens: an expression changes a face locally, so most of each
    voxel of the result is the same voxel of the neutral latent. Concatenated channels give every
    voxel its own neutral value directly, as image-conditioned diffusion models do; the tokens
    still let a voxel read the rest of the face (symmetry, the jaw moving the chin).
    """
    b = latent.shape[0]
    present = torch.ones(b, dtype=latent.dtype, device=latent.device) if drop is None else \
        (~drop.to(latent.device)).to(latent.dtype)
    present = present.view(b, 1, 1, 1, 1)
    return torch.cat([latent * present, present.expand(b, 1, *latent.shape[2:])], dim=1)


@dataclass
class ConditionDropout:
    """Draws per-sample CFG drop flags: expression and identity dropped independently.

    Independent drops train all four models at once - full, expression-only, identity-only and
    unconditional (probability p_e * p_i) - so guidance can drop either condition at sampling.
    """

    p_expression: float = 0.1
    p_identity: float = 0.1

    def __call__(self, batch: int, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.rand(2, batch, generator=generator, device=device)
        return u[0] < self.p_expression, u[1] < self.p_identity
