"""Typed training configs saved as TOML with every run, plus the named presets.

Configs are plain dataclasses so the GUI, the CLI and tests build them the same way; the
generic ``to_dict`` / ``from_dict`` helpers validate every key and type and name the bad one
(``model.chanels: unknown key``), so a typo in a hand-edited TOML never trains silently with a
default. The diffusion stage reuses the helpers for its own config classes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import tomli_w


if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")

OUTPUTS = ("radiance", "deformation")
FIELD_DECODERS = ("conv", "linear")


@dataclass
class ModelConfig:
    """Decoder shape. Level i has resolution 4 * 2**i and ``channels[i]`` channels."""

    embedding_dim: int = 64
    channels: list[int] = field(default_factory=lambda: [64, 64, 32, 16])
    blocks_per_level: int = 1
    latent_resolution: int = 8          # G1 ends here (diffusion runs on this volume)
    attention_resolutions: list[int] = field(default_factory=lambda: [8])
    norm: str = "group"                 # "batch" (paper) or "group" (batch-size independent)
    geometry: str = "density"           # "density" (paper) or "sdf" (models.geometry)
    density_bias: float = -4.0          # softplus(raw + bias): starts nearly empty, as NeRF-style grids do
    output: str = "radiance"            # what G2 decodes: "radiance" (geometry + RGB grid, 3DVADER) or
                                        # "deformation" (a displacement field of the neutral scan, models.deformation)
    output_shuffle: int = 1             # the last level's voxels each become shuffle^3 output voxels (1 = off)
    field_decoder: str = "conv"         # deformation G2: "conv" (the up-levels) or "linear" (one transposed
                                        # convolution to the output resolution: autodecoder.LinearFieldDecoder)

    @property
    def output_resolution(self) -> int:
        return 4 * 2 ** (len(self.channels) - 1) * self.output_shuffle

    @property
    def output_channels(self) -> int:
        return 3 if self.output == "deformation" else 4

    @property
    def latent_channels(self) -> int:
        return self.channels[self.latent_resolution.bit_length() - 3]

    def validate(self) -> None:
        _check(self.embedding_dim >= 1, "model.embedding_dim", "must be >= 1")
        _check(len(self.channels) >= 2 and all(c >= 1 for c in self.channels), "model.channels",
               "needs >= 2 positive entries (4^3 and at least one upsampling level)")
        levels = [4 * 2 ** i for i in range(len(self.channels))]
        _check(self.latent_resolution in levels, "model.latent_resolution", f"must be one of {levels}")
        _check(all(r in levels for r in self.attention_resolutions), "model.attention_resolutions",
               f"entries must be among {levels}")
        _check(self.blocks_per_level >= 1, "model.blocks_per_level", "must be >= 1")
        _check(self.norm in ("batch", "group"), "model.norm", "must be 'batch' or 'group'")
        _check(self.geometry in ("density", "sdf"), "model.geometry", "must be 'density' or 'sdf'")
        _check(self.output in OUTPUTS, "model.output", f"must be one of {', '.join(OUTPUTS)}")
        _check(self.output_shuffle in (1, 2, 4), "model.output_shuffle", "must be 1, 2 or 4")
        _check(self.output_shuffle == 1 or self.output == "deformation", "model.output_shuffle",
               "only for deformation fields (a radiance grid's surface needs its full-resolution level)")
        _check(self.field_decoder in FIELD_DECODERS, "model.field_decoder", f"must be one of {', '.join(FIELD_DECODERS)}")
        _check(self.field_decoder == "conv" or self.output == "deformation", "model.field_decoder",
               "'linear' only for deformation fields")
        _check(self.field_decoder == "conv" or self.output_resolution > self.latent_resolution,
               "model.field_decoder", "'linear' needs an output resolution above the latent's")


@dataclass
class RenderConfig:
    image_size: int = 64                # training views are resized to this square size
    samples_per_ray: int = 40
    background: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])

    def validate(self) -> None:
        _check(8 <= self.image_size <= 2048, "render.image_size", "must be in [8, 2048]")
        _check(self.samples_per_ray >= 2, "render.samples_per_ray", "must be >= 2")
        _check(len(self.background) == 3 and all(0 <= b <= 1 for b in self.background),
               "render.background", "must be 3 values in [0, 1]")


@dataclass
class LossConfig:
    rgb_l1: float = 1.0
    ssim: float = 0.2
    occupancy: float = 10.0             # L1(opacity, mask), weight 10 as in the paper
    depth: float = 1.0                  # L1 on valid depth, in head-box units
    perceptual: float = 0.1             # used only when vgg19_weights is set
    eikonal: float = 0.1                # |grad d| = 1, used only when model.geometry = "sdf"
    vgg19_weights: str = ""             # path to a torchvision-layout VGG-19 state dict; "" = off

    def validate(self) -> None:
        for name in ("rgb_l1", "ssim", "occupancy", "depth", "perceptual", "eikonal"):
            _check(getattr(self, name) >= 0, f"loss.{name}", "must be >= 0")
        _check(not self.vgg19_weights or os.path.isfile(os.path.expanduser(self.vgg19_weights)),
               "loss.vgg19_weights", f"file {self.vgg19_weights!r} does not exist")


@dataclass
class TrainConfig:
    lr: float = 5e-4                    # Adam, as in the paper
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    embedding_lr: float = 5e-3          # autodecoder codes see one object each: a larger step helps
    objects_per_batch: int = 4
    views_per_object: int = 2           # the paper uses 4
    max_steps: int = 2000
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 10
    keep_checkpoints: int = 2
    num_threads: int = 0                # 0 = all cores; a GUI sets cores - 1

    def validate(self) -> None:
        _check(self.lr > 0 and self.embedding_lr > 0, "train.lr", "learning rates must be > 0")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "train.betas",
               "must be two values in [0, 1)")
        for name in ("objects_per_batch", "views_per_object", "max_steps", "checkpoint_every",
                     "log_every", "keep_checkpoints"):
            _check(getattr(self, name) >= 1, f"train.{name}", "must be >= 1")
        _check(self.num_threads >= 0, "train.num_threads", "must be >= 0")


@dataclass
class RegistrationConfig:
    """How each expression segment's target field is found (models.deformation_targets).

    With a face model (``face_model``, an ICT .npz; the CLI and the app fill in the library's
    imported one): the rig is fitted to the subject's neutral scan once, moved by the segment's
    recorded ARKit weights, and its motion of every scan vertex becomes the field
    (:func:`facestudio.models.deformation.fit_field`), optionally refined by ``refine_steps`` of
    ICP onto the segment's fused scan. Without one: non-rigid ICP of the neutral scan onto the
    segment's fused scan (:func:`facestudio.models.deformation.register`), coarse to fine
    (16^3 then the field's resolution); correspondences farther than the gate are ignored both
    ways, since two fused scans never cover exactly the same skin. ICP alone misses large
    motions (an opened jaw: BENCHMARKS.md), which is why the rig comes first when there is one.
    """

    coarse_steps: int = 60
    fine_steps: int = 90
    points: int = 3000           # scan and target points drawn per step
    lr: float = 2e-3             # metres per Adam step
    smoothness: float = 1.0      # weight of the squared voxel-to-voxel differences
    gate_m: float = 0.01
    coarse_gate_m: float = 0.03  # the coarse level's gate: an opened jaw moves the chin by 2-3 cm
    face_model: str = ""         # ICT .npz: start from the rig's motion for the segment's blendshapes
    refine_steps: int = 0        # ICP steps after the rig's field (measured: they made ICT faces worse)
    refine_lr: float = 1e-4
    template_frame: bool = False  # with a face model: read fields on its template (the presets: on)
    eyeballs_back_m: float = 0.0  # template frame: its eyeballs this far behind the lids (presets: 0.02)
    seed: int = 0

    def validate(self) -> None:
        if self.points < 2:
            raise ValueError("registration.points: must be >= 2")
        for name in ("coarse_steps", "fine_steps", "refine_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"registration.{name}: must be >= 0")
        if not 0 <= self.eyeballs_back_m <= 0.05:
            raise ValueError("registration.eyeballs_back_m: must be in [0, 0.05] m")
        if not (self.lr > 0 and self.refine_lr > 0 and self.smoothness >= 0 and self.gate_m > 0
                and self.coarse_gate_m > 0):
            raise ValueError("registration: lr, refine_lr, gate_m and coarse_gate_m must be > 0, smoothness >= 0")


@dataclass
class AutodecoderConfig:
    preset: str = "tiny"
    model: ModelConfig = field(default_factory=ModelConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)   # deformation output only

    def validate(self) -> "AutodecoderConfig":
        for part in (self.model, self.render, self.loss, self.train, self.registration):
            part.validate()
        return self


def tiny() -> AutodecoderConfig:
    """Expressions as deformations of the person's fused neutral scan (issue 14), CPU-sized: a
    32^3 displacement field over the head box from an 8^3 x 16 latent. A small latent, since stage
    2 must model it from a few hundred segments; the last level at 16^3 voxel-shuffled to 32^3,
    since convolutions at 32^3 took 4x the time of the rest of the decoder. Fields in the face
    model's template frame when a face model is given (models.template_frame). Adam betas (0.9,
    0.999) rather than the paper's (0.5, 0.999) and 8 objects a step rather than 16 (twice the
    steps in the same time): an earlier short comparison whose figures were not kept; the decoder
    is still learning when a CPU budget ends (BENCHMARKS.md, "Stage 1 in the template frame").
    G2 is linear (autodecoder.LinearFieldDecoder): decoded fields 0.03 mm closer to their targets
    in the same minutes, and stage 2's linear expression mean becomes a linear model of the fields
    (held-out expression error 0.235 -> 0.186 mm over the 3 seeds of `eval expression`,
    BENCHMARKS.md). The template's eyeballs 2 cm back, so that closed eyes close
    (models.template_frame; BENCHMARKS.md, "Closed eyelids")."""
    return AutodecoderConfig(
        preset="tiny", model=ModelConfig(channels=[64, 16, 32], output="deformation", output_shuffle=2,
                                         field_decoder="linear"),
        train=TrainConfig(lr=1e-3, betas=[0.9, 0.999], embedding_lr=1e-2, objects_per_batch=8, max_steps=6000),
        registration=RegistrationConfig(template_frame=True, eyeballs_back_m=0.02)).validate()


def paper() -> AutodecoderConfig:
    """The paper's decoder sizes (3DVADER sec. 3 / supp.: 1024-d codes, 4^3x512 -> 64^3, 8^3x256
    latent) decoding a 64^3 deformation field."""
    config = paper_radiance()
    config.preset, config.model.output = "paper", "deformation"
    config.registration.template_frame = True
    config.registration.eyeballs_back_m = 0.02
    return config.validate()


def tiny_radiance() -> AutodecoderConfig:
    """Trains a recognisable face on a 2-core CPU in minutes: 32^3 output, 8^3 x 64 latent.

    A 2x larger decoder learning rate than the paper's: a few thousand steps is all a CPU gets.
    A distance grid rather than the paper's density: on a grid of 8 mm voxels it halved the mesh
    error in the same time (models.geometry). Depth weighted 10 rather than 1: a 2 mm depth
    error is 0.008 head-box units, which the x10 occupancy term drowned; at 10 the 15-minute mesh
    error went from 2.09 to 1.88 mm (BENCHMARKS.md).
    """
    return AutodecoderConfig(preset="tiny-radiance", model=ModelConfig(geometry="sdf"), loss=LossConfig(depth=10.0),
                             train=TrainConfig(lr=1e-3)).validate()


def paper_radiance() -> AutodecoderConfig:
    """The paper's sizes (3DVADER sec. 3 / supp.): 1024-d codes, 4^3x512 -> 64^3, 8^3x256 latent."""
    return AutodecoderConfig(
        preset="paper-radiance",
        model=ModelConfig(embedding_dim=1024, channels=[512, 256, 128, 64, 32], blocks_per_level=4,
                          latent_resolution=8, attention_resolutions=[8, 16], norm="batch"),
        render=RenderConfig(image_size=128, samples_per_ray=128),
        loss=LossConfig(),
        train=TrainConfig(lr=5e-4, betas=[0.5, 0.999], embedding_lr=5e-4, objects_per_batch=8,
                          views_per_object=4, max_steps=200_000, checkpoint_every=2000, log_every=50),
    ).validate()


PRESETS = {"tiny": tiny, "paper": paper, "tiny-radiance": tiny_radiance, "paper-radiance": paper_radiance}


def with_face_model(config: AutodecoderConfig, face_model: str | None) -> AutodecoderConfig:
    """The config with ``face_model`` (the library's imported ICT model, say) as the registration
    rig of a deformation run that names none; what the CLI and the app do before training."""
    if config.model.output == "deformation" and not config.registration.face_model and face_model:
        config.registration.face_model = str(face_model)
    return config


def load_config(spec: str | Path) -> AutodecoderConfig:
    """A preset name ("tiny", "paper") or a TOML file written by :func:`save_config` (or by hand)."""
    if str(spec) in PRESETS:
        return PRESETS[str(spec)]()
    return config_from_toml(read_config_file(spec, PRESETS), AutodecoderConfig, source=str(spec))


def read_config_file(spec: str | os.PathLike[str], presets: dict[str, Any]) -> str:
    """The text of config file ``spec``; a missing, unreadable or non-UTF-8 file is a ValueError
    naming it (what the CLI reports as a plain error)."""
    path = os.path.expanduser(spec)   # unlike Path.expanduser, never raises for "~nobody"
    if not os.path.isfile(path):
        raise ValueError(f"--config {str(spec)!r} is neither a preset ({', '.join(presets)}) nor a TOML file")
    return read_toml_text(Path(path))


def read_toml_text(path: Path) -> str:
    """A TOML file's text; an unreadable or non-UTF-8 file is a ValueError naming it."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file (byte {exc.start}); TOML must be UTF-8") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from None


def save_config(config: Any, path: Path) -> None:
    path.write_text(tomli_w.dumps(to_dict(config)), encoding="utf-8")


def parse_toml(text: str, source: str = "config") -> dict[str, Any]:
    """``text`` as TOML; every way it can be malformed is a ValueError naming ``source``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{source}: invalid TOML: {exc}") from None
    except RecursionError:   # tomllib recurses once per nested array or inline table
        raise ValueError(f"{source}: invalid TOML: arrays or tables nested too deeply") from None


def config_from_toml(text: str, cls: type[T], source: str = "config") -> T:
    obj = from_dict(cls, parse_toml(text, source))
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass tree as plain TOML-able values (properties are not stored)."""
    return dataclasses.asdict(obj)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; missing keys take defaults, unknown or mistyped ones raise."""
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else key
        if key not in fields:
            raise ValueError(f"{name}: unknown key (known: {', '.join(fields)})")
        kwargs[key] = _coerce(hints[key], value, name)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, name: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, name)
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ValueError(f"{name}: expected a list, got {value!r}")
        return [_coerce(item, v, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            if option is type(None) and value is None:
                return None
            try:
                return _coerce(option, value, name)
            except ValueError:
                continue
        raise ValueError(f"{name}: {value!r} does not match {tp}")
    if isinstance(value, int) and not isinstance(value, bool) and not -2 ** 63 <= value < 2 ** 63:
        raise ValueError(f"{name}: {value} is out of range (TOML integers are 64-bit)")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):   # no config number means anything as nan or inf
            raise ValueError(f"{name}: expected a finite number, got {value!r}")
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise ValueError(f"{name}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{key}: {message}")
