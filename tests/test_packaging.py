"""Packaging metadata a napari user (and napari hub) reads: licence, URLs, categories."""

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
MANIFEST = ROOT / "src" / "napari_uad" / "napari.yaml"

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

pytestmark = pytest.mark.skipif(not PYPROJECT.is_file(), reason="needs the source tree")


@pytest.fixture(scope="module")
def project():
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()


def test_licence(project):
    assert "License :: OSI Approved :: BSD License" in project["classifiers"]
    assert project["license"] == {"text": "BSD-3-Clause"}
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("BSD 3-Clause License")
    assert "Copyright (c) 2026, napari-uad developers" in licence


def test_notice_names_the_packaged_template_files():
    notice = (ROOT / "NOTICE").read_text(encoding="utf-8")
    assert "McConnell Brain Imaging Centre" in notice and "Fonov" in notice
    named = re.findall(r"src/napari_uad/\S+\.nii\.gz", notice)
    packaged = {
        p.relative_to(ROOT).as_posix()
        for p in [
            *(ROOT / "src/napari_uad/sample_data").glob("*.nii.gz"),
            *(ROOT / "src/napari_uad/prepare").glob("*.nii.gz"),
        ]
    }
    assert set(named) == packaged


def test_classifiers(project):
    classifiers = project["classifiers"]
    for version in ("3.10", "3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in classifiers
    for classifier in (
        "Framework :: napari",
        "Operating System :: OS Independent",
        "Intended Audience :: Science/Research",
        "Development Status :: 3 - Alpha",
    ):
        assert classifier in classifiers


def test_urls_napari_hub_reads(project):
    urls = project["urls"]
    for key in ("Source Code", "Bug Tracker", "Documentation", "User Support"):
        assert urls[key].startswith("https://")


def test_dependencies(project):
    names = [_requirement_name(r) for r in project["dependencies"]]
    assert "magicgui" not in names  # unused: napari brings its own
    assert any(r.replace(" ", "").startswith("dask[distributed]") for r in project["dependencies"])


def test_manifest_categories():
    npe2 = pytest.importorskip("npe2")
    from npe2.manifest.schema import Category

    manifest = npe2.PluginManifest.from_file(MANIFEST)
    assert manifest.name == "napari-uad"
    assert manifest.categories
    assert all(isinstance(c, Category) for c in manifest.categories)
    assert {c.value for c in manifest.categories} >= {"Segmentation", "Image Processing"}
