"""Expression presets (data files in resources/presets/expressions/NAME.toml) and --expr parsing.

A preset is a table of ARKit weights (``[blendshapes] name = weight``) plus a description;
presets are data so a lab can add its own without touching code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facestudio.faces.arkit import BLENDSHAPE_INDEX, BLENDSHAPE_NAMES, NUM_BLENDSHAPES
from facestudio.models.config import parse_toml, read_toml_text
from facestudio.paths import resources_dir

PRESETS_DIR = resources_dir() / "presets" / "expressions"


def _unknown(name: str) -> ValueError:
    return ValueError(f"unknown ARKit blendshape {name!r}; valid names: {', '.join(BLENDSHAPE_NAMES)}")


def check_weights(weights: dict[str, float], where: str) -> dict[str, float]:
    for name, value in weights.items():
        if name not in BLENDSHAPE_INDEX:
            raise _unknown(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{where}: {name} = {value!r} is not a weight in [0, 1]")
    return {k: float(v) for k, v in weights.items()}


def preset_names(folder: Path = PRESETS_DIR) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.toml"))


def load_preset(name: str, folder: Path = PRESETS_DIR) -> dict[str, float]:
    """{blendshape: weight} of preset ``name``; unknown presets and bad files raise ValueError."""
    path = folder / f"{name}.toml"
    if not path.is_file():
        raise ValueError(f"unknown expression preset {name!r}; available: {', '.join(preset_names(folder))}")
    data = parse_toml(read_toml_text(path), str(path))
    table = data.get("blendshapes", {})
    if not isinstance(table, dict):
        raise ValueError(f"{path}: [blendshapes] must be a table of weights")
    return check_weights(table, str(path))


def parse_expr(text: str) -> dict[str, float]:
    """``"jawOpen=0.8,mouthSmileLeft=0.5"`` -> {name: weight}."""
    out: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"--expr item {item!r}: expected NAME=WEIGHT")
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"--expr {name}: {value.strip()!r} is not a number") from None
    return check_weights(out, "--expr")


def expression_vector(expr: str | None = None, preset: str | None = None) -> np.ndarray:
    """(52,) float32: the preset's weights (if any) overridden by the explicit ``expr`` items."""
    weights = load_preset(preset) if preset else {}
    weights.update(parse_expr(expr) if expr else {})
    vec = np.zeros(NUM_BLENDSHAPES, dtype=np.float32)
    for name, value in weights.items():
        vec[BLENDSHAPE_INDEX[name]] = value
    return vec
