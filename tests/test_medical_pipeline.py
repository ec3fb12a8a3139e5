"""DICOM and NIfTI through the pipeline's own paths: validate and the training cache take DICOM slices exactly as
the JPEGs they were made from; `braintumor predict` gives one row per frame and slice and a volume summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import predict, tiny_params
from PIL import Image
from scan_files import compressed_dicom_bytes, dicom_bytes, nifti_bytes

from braintumor.data.cache import cached_images, load_image
from braintumor.data.validate import validate_dataset
from braintumor.model.predictor import Predictor
from braintumor.model.transforms import Preprocessing
from braintumor.scans.limits import ImageLimits

CLASSES = ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]


def pixels_of(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def as_dicoms(folder: Path) -> dict[str, Path]:
    """Replace four JPEGs of a class folder with DICOMs of the same pixels, each stored another way.

    Returns {DICOM path: the JPEG it replaced, moved out of the dataset}."""
    jpegs = sorted(folder.glob("*.jpg"))[:4]
    keep = folder.parent.parent.parent / "originals"
    keep.mkdir(exist_ok=True)
    pixels = [pixels_of(p) for p in jpegs]
    made = {
        folder / "plain.dcm": dicom_bytes(pixels[0]),
        # 16-bit signed, stored as 10p - 500 and rescaled back by slope 0.1, intercept 50; the window [0, 255]
        folder / "signed16.dcm": dicom_bytes(
            (pixels[1].astype(np.int16) * 10 - 500),
            RescaleSlope=0.1,
            RescaleIntercept=50,
            WindowCenter=128,
            WindowWidth=256,
        ),
        # MONOCHROME1 stores 255 - p: shown inverted, it is p again
        folder / "inverted.dcm": dicom_bytes(255 - pixels[2], photometric="MONOCHROME1"),
        folder / "IM0004": dicom_bytes(pixels[3]),  # no extension, found by its preamble
    }
    originals = {}
    for (path, data), jpeg in zip(made.items(), jpegs):
        path.write_bytes(data)
        originals[path] = jpeg.rename(keep / f"{folder.name}-{jpeg.name}")
    return originals


def test_validate_and_training_cache_take_dicom_as_the_jpeg_it_came_from(dataset_copy, tmp_path):
    originals = as_dicoms(dataset_copy / "Training" / "glioma_tumor")
    unusable = dataset_copy / "Training" / "no_tumor"
    (unusable / "series.dcm").write_bytes(dicom_bytes(np.zeros((3, 64, 64), dtype=np.uint8), NumberOfFrames=3))
    (unusable / "lossless.dcm").write_bytes(compressed_dicom_bytes())
    (unusable / "volume.nii.gz").write_bytes(nifti_bytes(np.zeros((64, 64, 4), dtype=np.int16), gz=True))

    params = tiny_params(dataset_copy)
    result = validate_dataset(dataset_copy, params.data, workers=1, progress=False)
    manifest = result.manifest.set_index("path")
    for dicom in originals:
        rel = dicom.relative_to(dataset_copy).as_posix()
        assert manifest.loc[rel, "label"] == "glioma_tumor"
        assert manifest.loc[rel, "mode"].startswith("DICOM MONOCHROME")
    assert manifest.loc["Training/glioma_tumor/signed16.dcm", "mode"] == "DICOM MONOCHROME2 16-bit signed"
    reasons = {p["path"]: p["reason"] for p in result.report["excluded"]}
    assert result.report["n_excluded"] == 3
    assert reasons["Training/no_tumor/series.dcm"].startswith(
        "DICOM MONOCHROME2 8-bit, 3 frames: 3 frames in one file, but a class folder takes one 2-D slice"
    )
    assert reasons["Training/no_tumor/lossless.dcm"].startswith("DICOM compressed as JPEG Lossless")
    assert reasons["Training/no_tumor/volume.nii.gz"].startswith(
        "NIfTI-1 64x64x4 int16: 4 axial slices in one file, but a class folder"
    )

    # The training cache (what every epoch reads) holds for each DICOM the image its JPEG gives.
    prep = Preprocessing.from_config(params.model, params.preprocess).scan
    rows = result.manifest[result.manifest["path"].isin([d.relative_to(dataset_copy).as_posix() for d in originals])]
    limits = ImageLimits.of(params.data)
    images = cached_images(rows, dataset_copy, prep, tmp_path / "cache", limits=limits, workers=1, progress=False)
    for image, rel in zip(images, rows["path"]):
        jpeg = originals[dataset_copy / rel]
        assert np.array_equal(image, load_image(jpeg, prep, limits)), rel


@pytest.fixture
def medical_scans(sample_root, tmp_path) -> dict[str, Path]:
    """A folder with an 8-bit DICOM, a 3-frame DICOM and a 9-slice NIfTI volume (2 black slices at each end)."""
    folder = tmp_path / "scans"
    folder.mkdir()
    testing = sample_root / "Testing"
    jpegs = [testing / c / f"te_{i:04d}.jpg" for c in CLASSES for i in range(2)][:5]
    pixels = [pixels_of(p) for p in jpegs]
    (folder / "one.dcm").write_bytes(dicom_bytes(pixels[0]))
    (folder / "series.dcm").write_bytes(dicom_bytes(np.stack(pixels[:3]), NumberOfFrames=3))
    planes = [np.zeros_like(pixels[0])] * 2 + pixels + [np.zeros_like(pixels[0])] * 2
    # each picture p is shown as the RAS+ plane p.T[::-1, ::-1] (medical._axial_picture undoes it)
    volume = np.stack([p.T[::-1, ::-1] for p in planes], axis=2).astype(np.int16)
    (folder / "brain.nii.gz").write_bytes(nifti_bytes(volume, gz=True))
    return {
        "one": folder / "one.dcm",
        "series": folder / "series.dcm",
        "volume": folder / "brain.nii.gz",
        "jpegs": jpegs,
    }


def test_predict_gives_a_row_per_frame_and_slice_and_a_volume_summary(capsys, model_file, medical_scans, tmp_path):
    output = tmp_path / "out.json"
    code, out, err = predict(
        capsys, str(medical_scans["one"].parent), "--model", str(model_file), "--output", str(output)
    )
    assert code == 0, err
    records = json.loads(output.read_text())
    volume, one, series = (str(medical_scans[k]) for k in ("volume", "one", "series"))
    assert [(r["file"], r["frame"]) for r in records] == (
        [(volume, k) for k in range(9)] + [(volume, None), (one, 0)] + [(series, k) for k in range(3)]
    )
    table = pd.DataFrame(records)
    assert list(table.columns) == ["file", "frame", "label", "probability", *CLASSES]

    # Each DICOM frame is predicted as the JPEG it holds; the volume summary averages the 5 slices with a head.
    predictor = Predictor(model_file)
    jpeg_probs = predictor.probabilities([predictor.load_image(p) for p in medical_scans["jpegs"]])
    np.testing.assert_allclose(table.loc[table["file"] == one, CLASSES], jpeg_probs[:1], atol=1e-9)
    np.testing.assert_allclose(table.loc[table["file"] == series, CLASSES], jpeg_probs[:3], atol=1e-9)
    slices = table[(table["file"] == volume) & table["frame"].notna()]
    summary = table[(table["file"] == volume) & table["frame"].isna()].iloc[0]
    expected = slices[CLASSES].to_numpy()[2:7].mean(axis=0)
    np.testing.assert_allclose(summary[CLASSES].to_numpy(dtype=float), expected, atol=1e-9)
    assert summary["label"] == CLASSES[int(expected.argmax())]
    assert f"{volume} [slice 4]" in out
    assert f"{volume} [volume: mean of the 5 of 9 slices that show a head]" in out
    assert f"{series} [frame 2]" in out


def test_middle_keeps_the_central_slices(capsys, model_file, medical_scans, tmp_path):
    output = tmp_path / "out.csv"
    code, out, err = predict(
        capsys,
        str(medical_scans["volume"]),
        str(medical_scans["one"]),
        "--middle",
        "3",
        "--model",
        str(model_file),
        "--output",
        str(output),
    )
    assert code == 0, err
    table = pd.read_csv(output, keep_default_na=False)
    assert table["frame"].astype(str).tolist() == ["3", "4", "5", "", "0"]  # the summary row has no frame
    code, _, err = predict(capsys, str(medical_scans["volume"]), "--middle", "0", "--model", str(model_file))
    assert code == 2 and err.startswith("error: --middle 0: give the number of middle slices")


def test_gradcam_names_each_frame(capsys, model_file, medical_scans, tmp_path):
    folder = tmp_path / "cams"
    code, _, err = predict(
        capsys,
        str(medical_scans["series"]),
        str(medical_scans["one"]),
        "--model",
        str(model_file),
        "--gradcam",
        str(folder),
    )
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == [
        "one.gradcam.png",
        "series.frame-0.gradcam.png",
        "series.frame-1.gradcam.png",
        "series.frame-2.gradcam.png",
    ]


def test_a_volume_summary_carries_the_mean_novelty_of_its_head_slices(
    capsys, novelty_model_file, medical_scans, tmp_path
):
    path, _ = novelty_model_file
    output = tmp_path / "out.json"
    code, _, err = predict(capsys, str(medical_scans["volume"]), "--model", str(path), "--output", str(output))
    assert code == 0, err
    table = pd.DataFrame(json.loads(output.read_text()))
    slices, summary = table[table["frame"].notna()], table[table["frame"].isna()].iloc[0]
    assert summary["novelty"] == pytest.approx(slices["novelty"].to_numpy()[2:7].mean(), rel=1e-9)
    assert summary["unlike_training"] == (summary["novelty"] > 1)
    assert list(table["unlike_training"]) == list(table["novelty"] > 1)
