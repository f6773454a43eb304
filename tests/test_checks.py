"""Input checks at the core (issue 17): skull and neck, label maps, contrast, the slice rule.

The checks run once per detection in :func:`napari_uad.pipeline.iter_detect`, so these tests
go through the functions of :mod:`napari_uad.checks`, then ``detect()``, ``napari-uad restore``
and the napari widgets. Heads come from :mod:`napari_uad.data.head_phantom` around
:func:`napari_uad.data.phantoms.make_brain` brains of adult size, drawn at 3 mm and upsampled to
finer voxels (seconds, not the half minute a 1 mm brain takes).
"""

from __future__ import annotations

import json
import shutil
import sys
import warnings

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_uad.checks import (
    TRAINED_MIN_BRAIN_FRACTION,
    ScanWarning,
    check_not_label_map,
    contrast_warning,
    label_map_values,
    scan_evidence,
    scan_warnings,
    skull_warning,
    trained_brain_fraction,
    trained_slices,
)
from napari_uad.cli import main
from napari_uad.data.head_phantom import make_head
from napari_uad.data.phantoms import make_brain
from napari_uad.data.samples import sample_path
from napari_uad.io import InputError, Scan, read_mask, read_scan
from napari_uad.pipeline import detect
from napari_uad.preprocess import canonical_affine, estimate_brain_mask, to_canonical

#: An adult brain's bounding box (mm): make_brain fills it with about 0.9-1.0 L of brain.
BRAIN_MM = (140.0, 170.0, 125.0)
SPACINGS = [(1.0, 1.0, 1.0), (1.5, 1.5, 1.5), (3.0, 3.0, 3.0), (1.2, 1.2, 3.0)]
_BRAINS: dict = {}


def adult_brain(spacing, seed=1):
    """A make_brain volume of adult size on a grid of ``spacing`` (drawn at 3 mm, upsampled)."""
    key = (tuple(spacing), seed)
    if key not in _BRAINS:
        coarse = tuple(int(round(s / 3.0)) for s in BRAIN_MM)
        brain, mask = make_brain(coarse, seed=seed)
        zoom = [3.0 / s for s in spacing]
        if zoom != [1.0, 1.0, 1.0]:
            brain = ndi.zoom(brain, zoom, order=1)
            mask = ndi.zoom(mask.astype(np.float32), zoom, order=1) > 0.5
            brain[~mask] = 0
        _BRAINS[key] = (brain.astype(np.float32) * 700, mask)
    return _BRAINS[key]


def evidence_of(data, affine, mask=None):
    """What the pipeline sees: the RAS scan, its estimated (or given) mask, the evidence."""
    ras, _ = to_canonical(data, affine)
    spacing = tuple(np.linalg.norm(canonical_affine(affine, data.shape)[:3, :3], axis=0))
    given = mask is not None
    mask_ras = to_canonical(mask, affine)[0] if given else estimate_brain_mask(ras)
    return scan_evidence(ras, mask_ras, spacing, mask_given=given), (ras, mask_ras, spacing)


def _slab(head, brain_shape, spacing, mm=24.0):
    """An axial slab of ``mm`` through the middle of the brain, as the sample is."""
    centre = head.offset[2] + brain_shape[2] // 2
    half = max(1, int(round(mm / spacing[2] / 2)))
    return head.image[:, :, centre - half : centre + half]


# --------------------------------------------------------------------------- skull and neck
@pytest.mark.parametrize("spacing", SPACINGS, ids=lambda s: "x".join(f"{v:g}" for v in s))
@pytest.mark.parametrize(
    ("zero_background", "bias"), [(False, 0.0), (True, 0.0), (False, 0.3), (True, 0.3)]
)
def test_heads_with_skull_and_neck_are_warned(spacing, zero_background, bias):
    brain, mask = adult_brain(spacing)
    head = make_head(
        brain, mask, spacing=spacing, seed=11, zero_background=zero_background, bias=bias
    )
    evidence, (ras, mask_ras, sp) = evidence_of(head.image, head.affine)
    assert evidence.skull and evidence.scalp and evidence.neck, evidence
    messages = scan_warnings(ras, mask_ras, sp)
    assert len(messages) == 1 and "\n" not in messages[0]
    assert messages[0].startswith("this scan looks like it still has skull and neck (estimated")
    assert "touches the bottom of the field of view" in messages[0]
    assert "napari-uad prepare" in messages[0] and "--brain-mask" in messages[0]
    # A 24 mm slab through the same head (the sample's shape): no neck, still its skull.
    slab_evidence, _ = evidence_of(_slab(head, brain.shape, spacing), head.affine)
    assert slab_evidence.skull and not slab_evidence.neck, slab_evidence
    # With the brain mask given, the scan's skull is outside what is scored: no warning.
    given, _ = evidence_of(head.image, head.affine, head.brain_mask)
    assert not given.skull and given.messages() == [], given


def test_skull_stripped_inputs_are_not_warned():
    inputs = []
    for spacing in SPACINGS:
        brain, _ = adult_brain(spacing, seed=2)
        inputs.append((f"brain {spacing}", brain, np.diag([*spacing, 1.0]), None))
        inputs.append(
            (f"int16 {spacing}", np.round(brain).astype(np.int16), np.diag([*spacing, 1.0]), None)
        )
    # The small phantoms of the other tests (fixtures, robust inputs, a 2-D slice).
    for seed, shape, spacing in [
        (3, (48, 56, 6), (1.2, 1.2, 3.0)),
        (10, (40, 44, 8), (1.4, 1.4, 3.0)),
        (0, (64, 64, 40), (1.0, 1.0, 1.0)),
        (5, (48, 48, 1), (1.0, 1.0, 1.0)),
    ]:
        image, _ = make_brain(shape, seed=seed)
        inputs.append((f"phantom {shape}", image * 800, np.diag([*spacing, 1.0]), None))
    # The shipped sample: a 24-slice slab (touches both ends of the field of view), int16.
    brain_mask = read_mask(sample_path("brain_mask"), like=read_scan(sample_path("healthy")))
    for name in ("healthy", "lesion"):
        scan = read_scan(sample_path(name))
        inputs.append((name, scan.data, scan.affine, None))
        inputs.append((f"{name} with its mask", scan.data, scan.affine, brain_mask))
    for name, data, affine, mask in inputs:
        evidence, (ras, mask_ras, spacing) = evidence_of(data, affine, mask)
        assert not evidence.skull, (name, evidence)
        assert scan_warnings(ras, mask_ras, spacing, mask_given=mask is not None) == [], name


def test_skull_warning_reasons():
    rng = np.random.default_rng(0)
    box = rng.rayleigh(20.0, size=(40, 40, 8)).astype(np.float32)  # noisy air, no zeros
    box[8:32, 8:32] += 400
    ras_mask = estimate_brain_mask(box)
    message = skull_warning(box, ras_mask, (1.0, 1.0, 1.0))
    assert message.startswith("this scan looks like it still has skull (estimated brain 5 mL")
    assert "noisy air around it" in message
    box[box < 60] = 0  # the air set to 0: a box of tissue is no evidence of a skull
    assert skull_warning(box, estimate_brain_mask(box), (1.0, 1.0, 1.0)) is None
    # A mask far bigger than a brain is a head, whatever else is seen.
    big = scan_evidence(box, ras_mask, (10.0, 10.0, 10.0), mask_given=True)
    assert big.volume_ml > 2500 and big.skull
    assert big.messages()[0].startswith("this scan looks like it still has skull (brain mask ")
    # Far bigger than any head: the voxel sizes are wrong, not the skull stripping.
    huge = scan_evidence(box, ras_mask, (500.0, 500.0, 900.0), mask_given=True)
    assert huge.messages() == [
        "this scan's brain mask measures 1,036,800,000 mL (7,200 mm tall), more than any head: "
        "check the voxel sizes in the file's header"
    ]


# --------------------------------------------------------------------------- label maps
def _atlas(shape=(40, 44, 20), labels=32, seed=0):
    """A label atlas: ``labels`` integer regions (Voronoi cells) in an ellipsoid, 0 around."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).reshape(3, -1).T
    centres = rng.uniform(0.3, 0.7, size=(labels, 3)) * np.array(shape)
    nearest = np.argmin(((grid[:, None, :] - centres[None]) ** 2).sum(-1), axis=1) + 1
    atlas = nearest.reshape(shape).astype(np.int16)
    x, y, z = (np.indices(shape).T / np.array(shape) - 0.5).T * 2
    atlas[x**2 + y**2 + z**2 > 1] = 0
    assert len(np.unique(atlas)) == labels + 1
    return atlas


def test_label_maps_and_masks_are_refused_and_scans_are_not():
    atlas = _atlas()
    assert label_map_values(atlas) == 33  # 32 regions and the background
    with pytest.raises(InputError) as caught:
        check_not_label_map(atlas)
    message = str(caught.value)
    assert "looks like a label map or mask (33 integer values), not a T1 scan" in message
    assert message.endswith("give the scan itself") and "\n" not in message
    assert label_map_values(atlas > 0) == 2  # a binary mask, bool
    mask = read_scan(sample_path("brain_mask"))
    assert label_map_values(mask.data) == 2
    # An atlas with more labels than the count limit is piecewise constant.
    assert label_map_values(_atlas((64, 64, 40), labels=100)) == 101
    # Real scans: int16 with hundreds of values, rounded phantoms, a 2-D 8-bit slice.
    for name in ("healthy", "lesion"):
        assert label_map_values(read_scan(sample_path(name)).data) is None
    image, _ = make_brain((40, 44, 8), seed=1)
    for scan in (image * 700, np.round(image * 700), np.round(image * 255)):
        assert label_map_values(scan) is None
    slice_2d, _ = make_brain((48, 48), seed=2)
    assert label_map_values(np.round(slice_2d * 255)[:, :, None]) is None
    # Constant volumes are left to the preprocessing's own message.
    assert label_map_values(np.full((8, 8, 4), 5.0)) is None


def test_label_map_through_restore_is_one_line_error(tmp_path, tiny_model_dir, capsys):
    path = tmp_path / "aparc.nii.gz"
    nib.save(nib.Nifti1Image(_atlas(), np.diag([1.2, 1.2, 3.0, 1.0])), path)
    out = tmp_path / "out"
    capsys.readouterr()
    code = main(
        ["restore", str(path), "--method", "anoddpm", "--model", str(tiny_model_dir)]
        + ["--device", "cpu", "--steps", "2", "--out", str(out)]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [
        "napari-uad: error: the scan looks like a label map or mask (33 integer values), not a "
        "T1 scan: give the scan itself"
    ]
    assert not out.exists() or not any(out.iterdir())


# --------------------------------------------------------------------------- contrast
@pytest.mark.parametrize("spacing", [(1.5, 1.5, 1.5), (1.2, 1.2, 3.0)])
def test_inverted_contrast_is_warned(spacing):
    brain, mask = adult_brain(spacing)
    affine = np.diag([*spacing, 1.0])
    evidence, (ras, mask_ras, sp) = evidence_of(brain, affine)
    assert evidence.t1_like and contrast_warning(ras, mask_ras, sp) is None
    inverted = np.where(mask, brain.max() - brain, 0)  # CSF bright, white matter dark
    evidence, (ras, mask_ras, sp) = evidence_of(inverted, affine)
    assert evidence.inverted and not evidence.skull, evidence
    messages = scan_warnings(ras, mask_ras, sp)
    assert len(messages) == 1 and messages[0] == contrast_warning(ras, mask_ras, sp)
    assert messages[0].startswith("this scan's contrast is unlike T1") and "\n" not in messages[0]
    # Small phantoms and the samples (the lesion sample's tumour lowers its median) are T1.
    for name in ("healthy", "lesion"):
        scan = read_scan(sample_path(name))
        assert evidence_of(scan.data, scan.affine)[0].t1_like
    image, small = make_brain((40, 44, 8), seed=3)
    assert evidence_of(image, np.eye(4))[0].t1_like
    assert evidence_of(np.where(small, 1 - image, 0), np.eye(4))[0].inverted


# --------------------------------------------------------------------------- the slice rule
def test_trained_slice_rule_and_config():
    from napari_uad.models.config import ModelConfig

    assert TRAINED_MIN_BRAIN_FRACTION == 0.35
    assert trained_brain_fraction({}) == trained_brain_fraction(None) == 0.35
    assert trained_brain_fraction({"min_brain_fraction": 0.5}) == 0.5
    areas = np.array([0, 10, 34, 35, 100, 60])
    masks = np.zeros((6, 10, 10), dtype=bool)
    for index, area in enumerate(areas):
        masks[index].flat[:area] = True
    np.testing.assert_array_equal(trained_slices(masks, 0.35), [0, 0, 0, 1, 1, 1])
    config = ModelConfig(name="x", preprocessing={"min_brain_fraction": 0.2})
    assert ModelConfig.from_dict(config.to_dict()).preprocessing["min_brain_fraction"] == 0.2
    bad = dict(config.to_dict(), preprocessing={"min_brain_fraction": 1.5})
    with pytest.raises(ValueError, match="min_brain_fraction"):
        ModelConfig.from_dict(bad)


def _with_thin_ends():
    """A phantom whose two lowest and one highest slices hold a little brain only."""
    image, mask = make_brain((40, 44, 9), seed=4)
    small = np.zeros(mask.shape[:2], dtype=bool)
    small[16:24, 18:26] = True  # 64 voxels, ~5 % of a middle slice
    for k in (0, 1, 8):
        mask[:, :, k] &= small
        image[:, :, k] *= mask[:, :, k]
    return (image * 800).astype(np.float32), mask


def test_detection_skips_the_slices_training_never_saw(tiny_model_dir):
    image, mask = _with_thin_ends()
    scan = Scan(image, np.diag([1.2, 1.2, 3.0, 1.0]))
    result = detect(scan, model=tiny_model_dir, brain_mask=mask, device="cpu", steps=2)
    provenance = result.provenance
    assert provenance["min_brain_fraction"] == 0.35
    assert provenance["slices_processed"] == 6 and provenance["slices_skipped"] == 3
    assert np.all(result.anomaly[:, :, [0, 1, 8]] == 0)
    assert all(result.anomaly[:, :, k].max() > 0 for k in range(2, 8))
    assert provenance["warnings"] == []
    # A requested range keeps the rule; a thin slice alone is refused in one line.
    result = detect(scan, model=tiny_model_dir, brain_mask=mask, device="cpu", steps=2,
                    slices=[1, 2, 3])  # fmt: skip
    assert result.provenance["slices_processed"] == 2
    assert result.provenance["slices_skipped"] == 1
    with pytest.raises(InputError, match="at least 35 % of the largest slice's brain area"):
        detect(scan, model=tiny_model_dir, brain_mask=mask, device="cpu", steps=2, slices=[8])


# --------------------------------------------------------------------------- in the pipeline
@pytest.fixture(scope="module")
def small_head():
    """A raw T1 head at 3 mm (65 x 75 x 71 voxels) with zero air, which fooled the old check."""
    brain, mask = adult_brain((3.0, 3.0, 3.0))
    return make_head(brain, mask, spacing=(3.0, 3.0, 3.0), seed=5, zero_background=True)


def test_detect_on_a_head_warns_and_records_it(tiny_model_dir, small_head):
    scan = Scan(small_head.image, small_head.affine)
    middle = [small_head.offset[2] + 20]  # one slice is enough: the check sees the volume
    with pytest.warns(ScanWarning, match="still has skull and neck") as caught:
        result = detect(scan, model=tiny_model_dir, device="cpu", steps=2, slices=middle)
    messages = [str(w.message) for w in caught if issubclass(w.category, ScanWarning)]
    assert len(messages) == 1
    assert result.provenance["warnings"] == messages
    # With its brain mask the same scan is fine.
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScanWarning)
        result = detect(scan, model=tiny_model_dir, brain_mask=small_head.brain_mask,
                        device="cpu", steps=2, slices=middle)  # fmt: skip
    assert result.provenance["warnings"] == []


def test_restore_on_a_head_prints_one_warning_line(tmp_path, tiny_model_dir, small_head, capsys):
    path = tmp_path / "raw_t1.nii.gz"
    nib.save(nib.Nifti1Image(small_head.image, small_head.affine), path)
    out = tmp_path / "out"

    def to_stderr(message, category, filename, lineno, file=None, line=None):
        """What a terminal gets (pytest records warnings instead of printing them)."""
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.showwarning = to_stderr
        code = main(
            ["restore", str(path), "--method", "anoddpm", "--model", str(tiny_model_dir)]
            + ["--device", "cpu", "--steps", "1", "--out", str(out)]
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 0, err
    lines = [line for line in err if "skull" in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("napari-uad: warning: this scan looks like it still has skull")
    assert lines[0].endswith("or give a brain mask (--brain-mask)")
    record = json.loads((out / "raw_t1.json").read_text())
    assert record["warnings"] == [lines[0].removeprefix("napari-uad: warning: ")]


def test_load_case_uses_the_core_skull_check(tmp_path, small_head):
    from napari_uad.cases import load_case, skull_stripped_warning

    path = tmp_path / "raw_t1.nii.gz"
    nib.save(nib.Nifti1Image(small_head.image, small_head.affine), path)
    case = load_case(path)
    assert len(case.notes) == 1 and "still has skull and neck" in case.notes[0]
    assert skull_stripped_warning(small_head.image, small_head.affine) == case.notes[0]
    assert (
        skull_stripped_warning(
            small_head.image, small_head.affine, brain_mask=small_head.brain_mask
        )
        is None
    )
    assert not load_case(sample_path("lesion")).notes


@pytest.mark.gui
def test_detect_widget_shows_the_scan_warnings(
    make_napari_viewer, qtbot, tmp_path, monkeypatch, tiny_model_dir, small_head
):
    from napari.utils.notifications import notification_manager

    from napari_uad.widgets.detect import DetectWidget, State

    folder = tmp_path / "models"
    shutil.copytree(tiny_model_dir, folder / "tiny")
    monkeypatch.setenv("NAPARI_UAD_MODELS", str(folder))
    path = tmp_path / "raw_t1.nii.gz"
    nib.save(nib.Nifti1Image(small_head.image, small_head.affine), path)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-uad")
    widget = DetectWidget(viewer)
    widget.set_params(model="tiny", device="cpu", steps=2)
    before = len(notification_manager.records)
    widget.run()
    with qtbot.waitSignal(widget.worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: widget.state is not State.RUNNING, timeout=10_000)
    assert widget.state is State.DONE, widget.status_label.text()
    assert "Warning: this scan looks like it still has skull" in widget.status_label.text()
    shown = [str(n.message) for n in notification_manager.records[before:]]
    assert sum("still has skull" in m for m in shown) == 1, shown


def test_new_models_record_the_slice_rule_training_used():
    import inspect

    from napari_uad.checks import TRAINED_MIN_BRAIN_FRACTION, trained_brain_fraction
    from napari_uad.models.config import ModelConfig
    from napari_uad.training.dataset import load_healthy_folder

    config = ModelConfig(name="new")
    assert config.preprocessing["min_brain_fraction"] == TRAINED_MIN_BRAIN_FRACTION
    default = inspect.signature(load_healthy_folder).parameters["min_brain_fraction"].default
    assert default == TRAINED_MIN_BRAIN_FRACTION
    assert trained_brain_fraction(config.preprocessing) == TRAINED_MIN_BRAIN_FRACTION
