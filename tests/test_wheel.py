"""The wheel and sdist (issue 8): built with setuptools' own PEP 517 hooks, as `python -m build`
and `pip install .` do, and checked to carry every subpackage and the resources."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _build(kind: str, out: Path) -> Path:
    code = f"from setuptools import build_meta as b; print(b.build_{kind}({str(out)!r}))"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    return out / res.stdout.strip().splitlines()[-1]


def _package_dirs() -> set[str]:
    return {str(p.parent.relative_to(ROOT)) for p in (ROOT / "facestudio").rglob("__init__.py")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return _build("wheel", tmp_path_factory.mktemp("wheel"))


def test_wheel_has_every_subpackage_and_the_resources(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [d for d in _package_dirs() if f"{d}/__init__.py" not in names]
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {missing}"
    resources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "resources").rglob("*") if p.is_file()}
    assert {"facestudio/" + r for r in resources} <= names


def test_installed_wheel_finds_its_presets_and_stylesheet(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--target", str(target), str(wheel)], check=True, timeout=120)
    code = ("import facestudio.paths as p, facestudio.generation.presets as g;"
            "print(p.resources_dir()); print(len(g.preset_names()));"
            "print((p.resources_dir() / 'facestudio.qss').is_file())")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(target), "PATH": ""}, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    where, presets, qss = out.stdout.split()
    assert Path(where) == target / "facestudio" / "resources"
    assert int(presets) == len(list((ROOT / "resources" / "presets" / "expressions").glob("*.toml")))
    assert qss == "True"


def test_sdist_carries_the_resources(tmp_path):
    sdist = _build("sdist", tmp_path)
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"pyproject.toml", "README.md", "resources/facestudio.qss",
            "resources/presets/expressions/smile.toml", "facestudio/__init__.py"} <= names
