"""napari-uad prepare: neck crop, N4, BET skull stripping, alignment, and the way back."""

import json

import nibabel as nib
import numpy as np
import pytest

from napari_uad.cli import main
from napari_uad.data.head_phantom import make_head
from napari_uad.data.phantoms import make_brain
from napari_uad.io import InputError, Scan
from napari_uad.prepare import PrepareOptions, prepare_scan
from napari_uad.prepare.bet import bet_mask, icosphere, surface_to_mask
from napari_uad.prepare.fov import head_box, head_mask
from napari_uad.prepare.resample import resample

SPACING = 2.5


def _dice(a, b):
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def head():
    brain, mask = make_brain((60, 72, 56), seed=1)
    return make_head(brain, mask, spacing=(SPACING,) * 3, seed=2, bias=0.2)


@pytest.fixture(scope="module")
def head_file(head, tmp_path_factory):
    path = tmp_path_factory.mktemp("head") / "head.nii.gz"
    nib.save(nib.Nifti1Image(np.rint(1000 * head.image).astype(np.int16), head.affine), path)
    return path


def _fast(**overrides):
    options = dict(resolution=SPACING, align="none")
    options.update(overrides)
    return PrepareOptions(**options)


def test_icosphere_is_a_closed_sphere():
    vertices, faces = icosphere(3)
    assert len(vertices) == 10 * 4**3 + 2
    edges = {tuple(sorted(e)) for f in faces for e in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0]))}
    assert len(vertices) - len(edges) + len(faces) == 2  # Euler characteristic of a sphere
    np.testing.assert_allclose(np.linalg.norm(vertices, axis=1), 1.0)
    # faces are counter-clockwise seen from outside: normals point away from the centre
    tri = vertices[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert np.all(np.einsum("ij,ij->i", normals, tri.mean(axis=1)) > 0)


def test_a_filled_sphere_surface_is_a_ball():
    vertices, faces = icosphere(3)
    mask = surface_to_mask(20 + 12 * vertices, faces, (41, 41, 41))
    ball = np.sum((np.indices((41, 41, 41)) - 20.0) ** 2, axis=0) <= 12**2
    assert _dice(mask, ball) > 0.95


def test_bet_finds_the_brain_of_a_head(head):
    image = resample(head.image, head.affine, head.image.shape, head.affine)  # float32
    mask = bet_mask(image, SPACING)
    assert _dice(mask, head.brain_mask) >= 0.90
    # and not the skull, fat or neck: the mask is about the brain's size
    assert 0.8 < mask.sum() / head.brain_mask.sum() < 1.3


def test_the_neck_is_cropped_from_the_top_of_the_head(head):
    mask = head_mask(head.image)
    box = head_box(mask, (SPACING,) * 3, height_mm=120.0)
    top = np.flatnonzero(mask.any(axis=(0, 1)))[-1]
    assert box[2][1] >= top
    assert (box[2][1] - box[2][0]) * SPACING <= 120.0 + SPACING * 3
    assert box[2][0] > 0  # the neck's lower part is gone


def test_prepare_strips_the_skull_and_maps_back_to_the_input(head):
    scan = Scan(head.image, head.affine)
    prepared = prepare_scan(scan, _fast())
    assert _dice(prepared.brain_mask_input, head.brain_mask) >= 0.90
    assert np.all(prepared.scan.data[~prepared.brain_mask] == 0)
    assert prepared.scan.data[prepared.brain_mask].min() >= 0
    names = [step["step"] for step in prepared.steps]
    assert names == [
        "reorient and crop",
        "N4 bias correction",
        "skull stripping (bet)",
        "alignment",
        "resample the brain",
    ]
    assert prepared.steps[3]["skipped"] == "not asked"
    record = prepared.provenance()
    assert record["options"]["skull_strip"] == "bet"
    np.testing.assert_allclose(record["prepared_to_input_world"], np.eye(4))
    json.dumps(record)  # JSON-ready


def test_n4_flattens_the_bias_field(head):
    scan = Scan(head.image, head.affine)
    inside = head.labels == 1  # brain
    corrected = prepare_scan(scan, _fast())
    plain = prepare_scan(scan, _fast(bias_correction=False))
    assert plain.steps[1] == {"step": "N4 bias correction", "skipped": "not asked"}

    def spread(prepared):  # white-matter-like voxels' spread across the brain
        values = prepared.to_input(prepared.scan.data)[inside]
        bright = values[values > np.percentile(values, 70)]
        return np.std(bright) / np.mean(bright)

    assert spread(corrected) < 0.8 * spread(plain)


def test_native_grid_maps_back_exactly(head):
    scan = Scan(head.image, head.affine)
    prepared = prepare_scan(scan, _fast(resolution=None, bias_correction=False))
    back = prepared.to_input(prepared.scan.data)
    brain = prepared.brain_mask_input
    np.testing.assert_allclose(back[brain], head.image[brain], rtol=1e-5)
    assert np.abs(back[~brain]).max() < 1e-4 * head.image.max()  # only rounding leaks


@pytest.fixture(scope="module")
def template_head():
    """A head around the shipped template's own brain (2 mm): registration has a true answer."""
    from scipy import ndimage

    from napari_uad.prepare.align import load_template

    brain, _ = load_template()
    mask = ndimage.binary_fill_holes(brain > 0.02)
    return make_head(brain * mask, mask, spacing=(2.0, 2.0, 2.0), seed=3)


def test_rigid_alignment_undoes_a_tilt(template_head):
    head = template_head
    angle = np.radians(15.0)
    tilt = np.eye(4)
    tilt[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    options = PrepareOptions(resolution=2.0, align="rigid", bias_correction=False)
    straight = prepare_scan(Scan(head.image, head.affine), options)
    tilted = prepare_scan(Scan(head.image, tilt @ head.affine), options)
    assert abs(tilted.steps[3]["rotation_deg"] - 15.0) < 2.0
    # the same brain tilted 15 degrees in the world: the two fits differ by that tilt
    relative = np.linalg.inv(straight.to_source_world) @ np.linalg.inv(tilt)
    relative = relative @ tilted.to_source_world
    residual = np.degrees(np.arccos(np.clip((np.trace(relative[:3, :3]) - 1) / 2, -1, 1)))
    assert residual < 2.0
    assert np.abs(relative[:3, 3]).max() < 2.0  # mm
    assert _dice(tilted.brain_mask_input, head.brain_mask) >= 0.90


def test_bad_inputs_get_one_line_errors(head):
    slab = Scan(head.image[:, :, 40:50], head.affine)
    with pytest.raises(InputError, match="whole head"):
        prepare_scan(slab)
    with pytest.raises(InputError, match="3-D"):
        prepare_scan(Scan(head.image[:, :, :1], head.affine))
    with pytest.raises(InputError, match="skull stripping must be"):
        PrepareOptions(skull_strip="magic")
    with pytest.raises(InputError, match="alignment must be"):
        PrepareOptions(align="elastic")
    with pytest.raises(InputError, match="resolution"):
        PrepareOptions(resolution=0.0)


def test_a_missing_external_stripper_says_how_to_get_it(head, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(InputError, match="hd-bet is not installed"):
        prepare_scan(Scan(head.image, head.affine), _fast(skull_strip="hd-bet"))


def test_an_installed_synthstrip_is_used(head, tmp_path, monkeypatch):
    """A stand-in ``mri_synthstrip`` on PATH (a quarter-of-maximum mask): its mask is used."""
    import sys

    tool = tmp_path / "bin" / "mri_synthstrip"
    tool.parent.mkdir()
    tool.write_text(
        f"#!{sys.executable}\n"
        "import sys, nibabel as nib, numpy as np\n"
        "args = dict(zip(sys.argv[1::2], sys.argv[2::2]))\n"
        "image = nib.load(args['-i'])\n"
        "mask = np.asarray(image.dataobj) > 0.25 * np.asarray(image.dataobj).max()\n"
        "nib.save(nib.Nifti1Image(mask.astype(np.uint8), image.affine), args['-m'])\n"
        f"open({str(tmp_path / 'called')!r}, 'w').write(' '.join(sorted(args)))\n"
    )
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tool.parent}:{__import__('os').environ['PATH']}")
    from napari_uad.prepare import available_strippers

    assert "synthstrip" in available_strippers()
    scan = Scan(head.image, head.affine)
    prepared = prepare_scan(scan, _fast(skull_strip="synthstrip", bias_correction=False))
    assert prepared.steps[2]["step"] == "skull stripping (synthstrip)"
    # the stand-in's rule (a quarter of the maximum; largest component), not BET's surface
    from napari_uad.prepare.core import _clean_mask

    expected = _clean_mask(head.image > 0.25 * head.image.max())
    assert (tmp_path / "called").read_text() == "-i -m"
    assert _dice(prepared.brain_mask_input, expected) > 0.9


def test_a_failing_external_stripper_gives_its_last_line(head, tmp_path, monkeypatch):
    tool = tmp_path / "hd-bet"
    tool.write_text("#!/bin/sh\necho 'CUDA out of memory' >&2\nexit 3\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    with pytest.raises(InputError, match=r"hd-bet failed \(exit 3\): CUDA out of memory"):
        prepare_scan(Scan(head.image, head.affine), _fast(skull_strip="hd-bet"))


def test_cancel_stops_between_steps(head):
    from napari_uad.methods.base import Cancelled

    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        prepare_scan(Scan(head.image, head.affine), _fast(), should_stop=should_stop)


def test_cli_choices_match_the_core():
    from napari_uad.cli import build_parser
    from napari_uad.prepare.align import ALIGNMENTS
    from napari_uad.prepare.strip import SKULL_STRIPPERS

    parser = build_parser()
    actions = {a.dest: a for a in parser._subparsers._group_actions[0].choices["prepare"]._actions}
    assert tuple(actions["skull_strip"].choices) == SKULL_STRIPPERS
    assert tuple(actions["align"].choices) == ALIGNMENTS


def test_prepare_command_writes_the_brain_and_its_masks(head, head_file, tmp_path, capsys):
    out = tmp_path / "prepared"
    args = ["prepare", str(head_file), "--resolution", str(SPACING), "--align", "none"]
    assert main([*args, "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "head_brain_mask.nii.gz",
        "head_prepare.json",
        "head_prepared.nii.gz",
        "head_prepared_brain_mask.nii.gz",
    ]
    source = nib.load(head_file)
    on_input = nib.load(out / "head_brain_mask.nii.gz")
    assert on_input.shape == source.shape
    np.testing.assert_allclose(on_input.affine, source.affine)
    assert _dice(np.asarray(on_input.dataobj) > 0, head.brain_mask) >= 0.90
    prepared = nib.load(out / "head_prepared.nii.gz")
    mask = np.asarray(nib.load(out / "head_prepared_brain_mask.nii.gz").dataobj) > 0
    assert prepared.shape == mask.shape
    assert np.all(np.asarray(prepared.dataobj)[~mask] == 0)
    record = json.loads((out / "head_prepare.json").read_text())
    assert [s["step"] for s in record["steps"]][0] == "reorient and crop"
    assert "brain" in capsys.readouterr().out
    # a second run refuses to replace the outputs
    assert main([*args, "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_prepare_command_refuses_a_slab(tmp_path, capsys):
    from napari_uad.data.samples import sample_path

    code = main(["prepare", str(sample_path("healthy")), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "whole head" in err
    assert not (tmp_path / "o").exists()


def test_restore_prepare_lands_on_the_input_grid(tiny_model_dir, head, head_file, tmp_path):
    out = tmp_path / "out"
    code = main(
        [
            "restore", str(head_file), "--prepare", "--prepare-resolution", str(SPACING),
            "--prepare-align", "none", "--method", "anoddpm", "--model", str(tiny_model_dir),
            "--steps", "2", "--device", "cpu", "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    source = nib.load(head_file)
    for suffix in ("healthy", "anomaly", "mask", "brain_mask"):
        image = nib.load(out / f"head_{suffix}.nii.gz")
        assert image.shape == source.shape
        np.testing.assert_allclose(image.affine, source.affine)
    brain = np.asarray(nib.load(out / "head_brain_mask.nii.gz").dataobj) > 0
    assert _dice(brain, head.brain_mask) >= 0.88
    anomaly = np.asarray(nib.load(out / "head_anomaly.nii.gz").dataobj)
    assert np.all(anomaly[~brain] == 0)  # no skull, fat or neck is scored
    record = json.loads((out / "head.json").read_text())
    assert record["parameters"]["brain_mask"] == "prepare"
    assert record["prepare"]["steps"][2]["step"] == "skull stripping (bet)"


def test_restore_refuses_prepare_with_a_brain_mask(head_file, tmp_path, capsys):
    code = main(
        [
            "restore", str(head_file), "--prepare", "--brain-mask", str(head_file),
            "--method", "anoddpm", "--out", str(tmp_path / "o"),
        ]
    )  # fmt: skip
    assert code == 2
    assert "not both" in capsys.readouterr().err


def test_the_napari_case_is_cut_out_of_the_raw_voxels(head):
    from dataclasses import replace

    from napari_uad.prepare.case import NAPARI_OPTIONS, prepared_case

    assert NAPARI_OPTIONS.align == "none" and NAPARI_OPTIONS.resolution is None
    scan = Scan(head.image, head.affine, source="/data/raw.nii.gz")
    case, prepared = prepared_case(scan, replace(NAPARI_OPTIONS, bias_correction=False))
    assert case.scan.shape == scan.shape
    np.testing.assert_allclose(case.scan.affine, scan.affine)
    brain = case.brain_mask
    np.testing.assert_allclose(case.scan.data[brain], head.image[brain], rtol=1e-5)
    assert np.all(case.scan.data[~brain] == 0)
    assert case.info.name == "raw_prepared" and case.scan.source.name == "raw_prepared.nii.gz"
    assert _dice(brain, head.brain_mask) >= 0.9


def test_affine_alignment_undoes_a_scaling(template_head):
    head = template_head
    scaled = np.diag([1.1, 1.1, 1.1, 1.0]) @ head.affine  # a 10 % larger head in the world
    options = PrepareOptions(resolution=2.0, align="affine", bias_correction=False)
    prepared = prepare_scan(Scan(head.image, scaled), options)
    scale = prepared.steps[3]["scale"]
    assert all(abs(s - 1.1) < 0.03 for s in scale)  # template -> scan stretches by 1.1
    # the prepared brain is template-sized again, and maps back onto the scaled scan
    assert _dice(prepared.brain_mask_input, head.brain_mask) >= 0.90
