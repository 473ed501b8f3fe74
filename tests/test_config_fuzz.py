"""Fuzzing the TOML loaders (autodecoder and diffusion configs, expression presets).

A hand-edited file is untrusted input: whatever it holds, loading must give a validated config
or one ValueError naming the problem (what the CLI prints as ``error: ...``), never a
TypeError, KeyError, RecursionError or a hang. Documents are mostly valid configs with a few
leaves replaced, deleted or added, so the fuzzer reaches the validators, plus raw text and
bytes for the parser.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any, Callable

import pytest
import tomli_w
from hypothesis import given, settings, strategies as st

from facestudio.faces.arkit import BLENDSHAPE_NAMES
from facestudio.generation.presets import load_preset
from facestudio.models import config as ad_config
from facestudio.models import diffusion_config as diff_config
from facestudio.models.config import (AutodecoderConfig, config_from_toml, load_config, save_config,
                                      to_dict)
from facestudio.models.diffusion_config import DiffusionConfig, load_diffusion_config

FUZZ = settings(max_examples=200, deadline=None)
KINDS: dict[str, tuple[type, Callable[[Path], Any], dict[str, Any]]] = {
    "autodecoder": (AutodecoderConfig, load_config, to_dict(ad_config.tiny())),
    "diffusion": (DiffusionConfig, load_diffusion_config, to_dict(diff_config.tiny())),
}


def _field_names(cls: type) -> set[str]:
    names: set[str] = set()
    for f in dataclasses.fields(cls):
        names.add(f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            names |= _field_names(type(default))
    return names


KEYS = st.one_of(st.sampled_from(sorted(_field_names(AutodecoderConfig) | _field_names(DiffusionConfig))),
                 st.text(min_size=1, max_size=8))
SCALARS = st.one_of(
    st.integers(-3, 300),                                   # around every validator's bounds
    st.integers(-2 ** 80, 2 ** 80),                          # beyond TOML's 64 bits and a float
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.text(max_size=12),
    st.sampled_from(["group", "batch", "tiny", "~nobody-here/vgg.pth", ""]),
    st.datetimes(), st.dates(), st.times())
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=5)
                      | st.dictionaries(KEYS, inner, max_size=4), max_leaves=10)


def _leaves(doc: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for key, value in doc.items():
        out.append(prefix + (key,))
        if isinstance(value, dict):
            out += _leaves(value, prefix + (key,))
    return out


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with 1-4 keys replaced by random values, deleted, or added beside them."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        *parents, key = draw(st.sampled_from(_leaves(doc) or [("x",)]))
        table = doc
        for p in parents:
            table = table[p]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete":
            table.pop(key, None)
        else:
            table[draw(KEYS) if action == "add" else key] = draw(VALUES)
    return doc


def load_or_value_error(load: Callable[[], Any]) -> Any:
    """The loaded object, or None after a ValueError with a message; anything else fails."""
    try:
        return load()
    except ValueError as exc:
        assert str(exc).strip(), "a config error must say what is wrong"
        return None


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("kind", sorted(KINDS))
@FUZZ
@given(data=st.data())
def test_mutated_config_loads_validated_or_raises_a_value_error(kind: str, data: st.DataObject,
                                                                 folder: Path) -> None:
    cls, load, base = KINDS[kind]
    doc = data.draw(mutated(base))
    text = tomli_w.dumps(doc)
    cfg = load_or_value_error(lambda: config_from_toml(text, cls))
    if cfg is not None:
        cfg.validate()
        if kind == "autodecoder":   # derived sizes must exist for every accepted config
            assert cfg.model.output_resolution >= 8 and cfg.model.latent_channels >= 1
        path = folder / f"{kind}-roundtrip.toml"
        save_config(cfg, path)
        assert load(path) == cfg


@pytest.mark.parametrize("kind", sorted(KINDS))
@FUZZ
@given(raw=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                     st.builds(lambda d: tomli_w.dumps(d).encode(), st.dictionaries(KEYS, VALUES, max_size=4))))
def test_arbitrary_bytes_load_or_raise_a_value_error(kind: str, raw: bytes, folder: Path) -> None:
    _, load, _ = KINDS[kind]
    path = folder / f"{kind}.toml"
    path.write_bytes(raw)
    load_or_value_error(lambda: load(path))


@FUZZ
@given(doc=st.fixed_dictionaries(
    {}, optional={"description": VALUES,
                  "blendshapes": st.one_of(VALUES, st.dictionaries(
                      st.one_of(st.sampled_from(BLENDSHAPE_NAMES), KEYS),
                      st.one_of(st.floats(-0.5, 1.5), SCALARS), max_size=6))}),
       raw=st.none() | st.binary(max_size=100))
def test_expression_preset_file_loads_valid_weights_or_raises_a_value_error(doc: dict[str, Any],
                                                                             raw: bytes | None,
                                                                             folder: Path) -> None:
    (folder / "fuzzed.toml").write_bytes(tomli_w.dumps(doc).encode() if raw is None else raw)
    weights = load_or_value_error(lambda: load_preset("fuzzed", folder))
    if weights is not None:
        assert set(weights) <= set(BLENDSHAPE_NAMES)
        assert all(type(w) is float and 0.0 <= w <= 1.0 for w in weights.values())


@pytest.mark.parametrize("text,needle", [
    ("a = " + "[" * 5000 + "]" * 5000, "nested too deeply"),          # tomllib recursion
    ("a = " + "{b = " * 5000 + "1" + "}" * 5000, "nested too deeply"),
    ("[train]\nmax_steps = 123456789012345678901234567890\n", "train.max_steps: 1234"),
    ("[train]\nlr = 1" + "0" * 400 + "\n", "train.lr"),                 # int too large for a float
    ("[train]\nlr = nan\n", "train.lr: expected a finite number"),
    ("[render]\nbackground = [inf, 0.0, 0.0]\n", "render.background[0]"),
    ("[loss]\nvgg19_weights = '~nobody-here-xyz/vgg.pth'\n", "loss.vgg19_weights"),
    ("[model]\nchannels = 'wide'\n", "model.channels: expected a list"),
])
def test_nasty_autodecoder_configs_name_the_problem(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        config_from_toml(text, AutodecoderConfig)


def test_non_utf8_config_is_a_clear_cli_error(tmp_path, capsys) -> None:
    from facestudio.cli.main import main

    bad = tmp_path / "latin1.toml"
    bad.write_bytes("[train]\n# d\xe9j\xe0 vu\n".encode("latin-1"))
    for load in (load_config, load_diffusion_config):
        with pytest.raises(ValueError, match="not a UTF-8 text file"):
            load(bad)
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "latin1.toml").write_bytes(bad.read_bytes())
    with pytest.raises(ValueError, match="not a UTF-8 text file"):
        load_preset("latin1", tmp_path / "presets")
    assert main(["train", "autodecoder", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and str(bad) in err and "UTF-8" in err and "Traceback" not in err
