import numpy as np
import pytest
from scipy import ndimage

from napari_uad.data.samples import SAMPLE_FILES, sample_path

nib = pytest.importorskip("nibabel")


@pytest.fixture(scope="module")
def scans():
    return {name: nib.load(sample_path(name)) for name in SAMPLE_FILES}


def test_sample_files_exist():
    for name in SAMPLE_FILES:
        path = sample_path(name)
        assert path.is_file() and path.name.endswith(".nii.gz")
    assert (sample_path("healthy").parent / "LICENSE_MNI152.txt").is_file()


def test_samples_share_one_grid(scans):
    reference = scans["healthy"]
    assert reference.shape == (153, 189, 24)
    assert reference.header.get_zooms() == (1.0, 1.0, 1.0)
    assert nib.aff2axcodes(reference.affine) == ("R", "A", "S")
    for image in scans.values():
        assert image.shape == reference.shape
        assert np.allclose(image.affine, reference.affine)


def test_sample_contents(scans):
    healthy = np.asarray(scans["healthy"].dataobj)
    lesion = np.asarray(scans["lesion"].dataobj)
    truth = np.asarray(scans["lesion_truth"].dataobj)
    mask = np.asarray(scans["brain_mask"].dataobj)
    assert healthy.dtype == lesion.dtype == np.int16
    assert truth.dtype == mask.dtype == np.uint8
    assert healthy.min() == 0 and lesion.max() <= 1000
    assert set(np.unique(truth)) == {0, 1} and set(np.unique(mask)) == {0, 1}
    assert truth.any() and not (truth.astype(bool) & ~mask.astype(bool)).any()
    assert (healthy[mask == 0] == 0).all()
    near = ndimage.binary_dilation(truth.astype(bool), structure=np.ones((3, 3, 3)), iterations=2)
    assert np.abs(lesion.astype(int) - healthy)[~near].max() <= 1
    assert np.abs(lesion.astype(int) - healthy)[truth.astype(bool)].mean() > 50
    n_lesions = ndimage.label(truth, structure=np.ones((3, 3, 3)))[1]
    assert n_lesions >= 3


def test_sample_folder_is_small():
    folder = sample_path("healthy").parent
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    assert total < 2 * 1024 * 1024


def test_sample_licence_names_the_template():
    text = (sample_path("healthy").parent / "LICENSE_MNI152.txt").read_text()
    assert "McConnell Brain Imaging Centre" in text and "Fonov" in text


def test_unknown_sample_name():
    with pytest.raises(ValueError, match="healthy"):
        sample_path("tumour")
