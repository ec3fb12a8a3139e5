"""DICOM and NIfTI scans become the same 8-bit grayscale pictures as every other format (scans/read.py).

Every file is written here with pydicom or nibabel: 8-bit, 16-bit signed with slope/intercept and a VOI window,
MONOCHROME1, multi-frame, a compressed syntax without a decoder, 3-D NIfTI volumes.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from scan_files import compressed_dicom_bytes, dicom_bytes, nifti_bytes

from braintumor.data.cache import load_image
from braintumor.scans.dicom import apply_window
from braintumor.scans.limits import ImageLimits, ImageProblem
from braintumor.scans.preprocess import ScanPrep
from braintumor.scans.read import decode_grayscale, is_candidate, open_checked, read_pictures

LIMITS = ImageLimits(max_pixels=10**7)
PREP = ScanPrep(size=48, head_crop=True, intensity="percentile")


def gray(source: bytes) -> np.ndarray:
    return np.asarray(decode_grayscale(source, limits=LIMITS))


def phantom(size: int = 64, seed: int = 0) -> np.ndarray:
    """(size, size) floats in [0, 1]: a bright disc (the head) with texture, on black."""
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2
    texture = np.random.default_rng(seed).uniform(0.3, 1.0, (size, size))
    return disc * texture


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# ---- DICOM ---------------------------------------------------------------------------------------------------


def test_8bit_dicom_is_the_picture_a_png_of_its_pixels_is():
    pixels = np.round(phantom() * 255).astype(np.uint8)
    dicom = dicom_bytes(pixels)
    assert np.array_equal(gray(dicom), pixels)
    assert np.array_equal(load_image(dicom, PREP, LIMITS), load_image(png(pixels), PREP, LIMITS))


def test_16bit_signed_rescale_then_window():
    # Stored values v, rescaled to 2v - 1024; the window (center 0, width 1001) spans -500..500 after rescaling.
    stored = np.array([[-200, 262, 512], [762, 1000, 2000]], dtype=np.int16)  # rescaled: -1424, -500, 0, 500, ...
    dicom = dicom_bytes(stored, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=0, WindowWidth=1001)
    out = gray(dicom)
    # PS3.3 C.11.2.1.2.1 (LINEAR): below c - 0.5 - (w - 1)/2 = -500.5 black, above c - 0.5 + (w-1)/2 = 499.5 white
    assert out.tolist() == [[0, 0, 128], [255, 255, 255]]
    # without slope/intercept the same window would see values 2x smaller and 1024 higher: another picture
    assert not np.array_equal(gray(dicom_bytes(stored, WindowCenter=0, WindowWidth=1001)), out)


def test_window_functions_follow_the_standard():
    values = np.array([-10.0, 39.5, 40.0, 90.0])
    np.testing.assert_allclose(apply_window(values, 40, 100, "LINEAR"), [0, 0.5, 0.5 + 0.5 / 99, 1])
    np.testing.assert_allclose(apply_window(values, 40, 100, "LINEAR_EXACT"), [0, 0.495, 0.5, 1])
    np.testing.assert_allclose(apply_window(np.array([40.0]), 40, 100, "SIGMOID"), [0.5])


def test_without_a_window_a_percentile_window_keeps_hot_pixels_from_darkening_the_scan():
    rng = np.random.default_rng(1)
    body = (phantom(80) * 3000).astype(np.uint16)  # a 12-bit-like scan
    inside = phantom(80) > 0
    body.flat[rng.choice(np.flatnonzero(inside), 5, replace=False)] = 65000  # a few hot pixels in the head
    out = gray(dicom_bytes(body))
    # min-max would squeeze the head into 0..12; the 0.5-99.5th percentiles give it most of the range
    assert np.percentile(out[inside], 90) > 200
    assert out[~inside].max() == 0


def test_monochrome1_is_inverted():
    stored = (phantom() * 4000).astype(np.uint16)
    normal = gray(dicom_bytes(stored, WindowCenter=2000, WindowWidth=4000))
    inverted = gray(dicom_bytes(stored, photometric="MONOCHROME1", WindowCenter=2000, WindowWidth=4000))
    assert np.array_equal(inverted.astype(int), 255 - normal.astype(int))
    assert normal.max() > 200  # not trivially 0 and 255 everywhere


def test_multi_frame_gives_one_picture_per_frame():
    frames = np.stack([np.round(phantom(seed=i) * 255).astype(np.uint8) for i in range(3)])
    pictures = read_pictures(dicom_bytes(frames, NumberOfFrames=3), limits=LIMITS)
    assert pictures.numbers == [0, 1, 2] and pictures.kind == "dicom"
    for image, frame in zip(pictures.images, frames):
        assert image.mode == "L" and np.array_equal(np.asarray(image), frame)


def test_enhanced_multi_frame_uses_each_frames_own_window():
    frames = np.stack([np.full((8, 8), 1000, dtype=np.uint16)] * 2)
    data = dicom_bytes(frames, NumberOfFrames=2)
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    per_frame = []
    for center in (1000, 2000):  # frame 0: the value sits mid-window; frame 1: below the window
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = center, 500
        group = Dataset()
        group.FrameVOILUTSequence = [voi]
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    pictures = read_pictures(buffer.getvalue(), limits=LIMITS)
    assert [int(np.asarray(p).max()) for p in pictures.images] == [128, 0]


def test_class_folders_refuse_a_multi_frame_dicom_with_the_reason():
    data = dicom_bytes(np.zeros((3, 16, 16), dtype=np.uint8), NumberOfFrames=3)
    with pytest.raises(
        ImageProblem,
        match=r"DICOM MONOCHROME2 8-bit, 3 frames: 3 frames in one file, but a class "
        r"folder takes one 2-D slice per file",
    ):
        open_checked(data, limits=LIMITS)


def test_a_compressed_syntax_without_decoder_names_the_syntax_and_the_packages():
    with pytest.raises(ImageProblem) as caught:
        read_pictures(compressed_dicom_bytes(), limits=LIMITS)
    message = str(caught.value)
    assert message.startswith("DICOM compressed as JPEG Lossless, Non-Hierarchical, First-Order Prediction")
    assert "(1.2.840.10008.1.2.4.70)" in message
    assert "pip install pylibjpeg pylibjpeg-libjpeg" in message and "pip install python-gdcm" in message


def test_dicom_limits_and_broken_files():
    thin = dicom_bytes(np.zeros((4, 40), dtype=np.uint8))
    with pytest.raises(
        ImageProblem, match=r"40x4 is 10.0 times longer than wide, over the limit data.max_aspect_ratio"
    ):
        read_pictures(thin, limits=ImageLimits(max_pixels=10**7, max_aspect_ratio=5))
    with pytest.raises(ImageProblem, match=r"bytes is over the limit data.max_file_bytes=1,000"):
        read_pictures(dicom_bytes(np.zeros((64, 64), dtype=np.uint8)), limits=ImageLimits(max_file_bytes=1000))
    with pytest.raises(
        ImageProblem,
        match=r"3 frames of 16x16 = 768 pixels in one file, over the limit "
        r"data.max_image_pixels=700",
    ):
        read_pictures(
            dicom_bytes(np.zeros((3, 16, 16), dtype=np.uint8), NumberOfFrames=3), limits=ImageLimits(max_pixels=700)
        )
    no_pixels = dicom_bytes(np.zeros((4, 4), dtype=np.uint8))
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(no_pixels))
    del ds.PixelData
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with pytest.raises(ImageProblem, match="a DICOM file without pixel data"):
        read_pictures(buffer.getvalue(), limits=LIMITS)
    truncated = dicom_bytes(np.zeros((64, 64), dtype=np.uint16))[:-1000]
    with pytest.raises(ImageProblem):
        read_pictures(truncated, limits=LIMITS)


def test_dicom_files_are_found_by_suffix_or_preamble(tmp_path):
    pixels = np.zeros((8, 8), dtype=np.uint8)
    for name in ("scan.dcm", "SCAN.DCM", "IM0001", "1.2.840.113619.2.55.3.12"):
        (tmp_path / name).write_bytes(dicom_bytes(pixels))
        assert is_candidate(tmp_path / name), name
    (tmp_path / "README").write_text("not a scan")
    (tmp_path / "notes.1").write_bytes(bytes(200))
    assert not is_candidate(tmp_path / "README") and not is_candidate(tmp_path / "notes.1")
    # a .dcm without preamble (a bare data set, as some tools write) is read too
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(dicom_bytes(pixels + 7, preamble=False))
    assert np.asarray(decode_grayscale(bare, limits=LIMITS)).tolist() == (pixels + 7).tolist()


# ---- NIfTI ---------------------------------------------------------------------------------------------------


def marked_volume() -> np.ndarray:
    """(X=20, Y=24, Z=5) RAS+ volume: background 100, an anterior marker (high y) and a patient-right one (high x)."""
    volume = np.full((20, 24, 5), 100, dtype=np.int16)
    volume[8:12, 20:24, :] = 1000  # anterior, centre
    volume[16:20, 10:14, :] = 500  # patient's right, mid
    volume[:, :, 4] += 50  # the top slice differs
    return volume


def test_nifti_slices_are_axial_anterior_up_patient_right_on_the_left():
    pictures = read_pictures(nifti_bytes(marked_volume()), limits=LIMITS)
    assert pictures.kind == "nifti" and pictures.numbers == [0, 1, 2, 3, 4]
    picture = np.asarray(pictures.images[0])
    assert picture.shape == (24, 20)  # rows = Y, columns = X
    background = picture[12, 10]
    assert picture[0:4, 8:12].min() > 200 and picture[20:24, 8:12].max() == background  # anterior at the top
    assert picture[10:14, 0:4].min() > background + 50  # the patient's right on the image's left
    assert picture[10:14, 16:20].max() == background


def test_nifti_orientation_comes_from_the_affine():
    """The same anatomy stored left-to-right (LAS) gives the same pictures: nibabel reorients to RAS+."""
    ras = read_pictures(nifti_bytes(marked_volume()), limits=LIMITS)
    las_affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    las_affine[0, 3] = 19
    las = read_pictures(nifti_bytes(marked_volume()[::-1].copy(), las_affine), limits=LIMITS)
    for a, b in zip(ras.images, las.images):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_nifti_gz_scaling_and_display_range():
    volume = marked_volume()
    plain = read_pictures(nifti_bytes(volume), limits=LIMITS)
    packed = read_pictures(nifti_bytes(volume, gz=True), limits=LIMITS)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(plain.images, packed.images))
    # cal_min / cal_max is the display window when set: 100..1000 -> 0..255
    shown = read_pictures(nifti_bytes(volume, cal_min=100, cal_max=1000), limits=LIMITS)
    picture = np.asarray(shown.images[0])
    assert picture[12, 10] == 0 and picture[0, 10] == 255 and picture[12, 1] == round(400 / 900 * 255)


def test_nifti_non_square_voxels_become_square_pixels():
    affine = np.diag([1.0, 2.0, 1.0, 1.0])  # 2 mm along Y: the picture is twice as tall as the voxel count
    pictures = read_pictures(nifti_bytes(marked_volume(), affine), limits=LIMITS)
    assert pictures.images[0].size == (20, 48)


def test_nifti_problems_are_named():
    stretched = np.diag([1.0, 8.0, 1.0, 1.0])  # 8 mm voxels along Y: the square-pixel picture would be 20 x 192
    with pytest.raises(ImageProblem, match=r"20x192 is 9.6 times longer than wide, over the limit"):
        read_pictures(nifti_bytes(marked_volume(), stretched), limits=ImageLimits(max_pixels=10**7, max_aspect_ratio=5))
    with pytest.raises(ImageProblem, match=r"a 4-D NIfTI image 20x24x5x2: give one 3-D volume"):
        read_pictures(nifti_bytes(np.zeros((20, 24, 5, 2), dtype=np.int16)), limits=LIMITS)
    with pytest.raises(ImageProblem, match=r"truncated NIfTI file"):
        read_pictures(nifti_bytes(marked_volume())[:-100], limits=LIMITS)
    with pytest.raises(ImageProblem, match=r"5 slices of 20x24 = 2,400 pixels in one file, over the limit"):
        read_pictures(nifti_bytes(marked_volume(), gz=True), limits=ImageLimits(max_pixels=2000))
    with pytest.raises(
        ImageProblem,
        match=r"^NIfTI-1 20x24x5 int16: 5 axial slices in one file, but a class "
        r"folder takes one 2-D slice per file",
    ):
        open_checked(nifti_bytes(marked_volume()), limits=LIMITS)


def test_nifti_files_are_candidates(tmp_path):
    for name in ("brain.nii", "brain.nii.gz", "BRAIN.NII.GZ"):
        assert is_candidate(Path(tmp_path / name))
    assert not is_candidate(tmp_path / "brain.gz")
