"""Issue 28 row 13: what pydicom and nibabel say about a file reaches the user as one line naming the file, through
logging: no library source paths, nothing twice (nibabel's logger has a stream handler of its own)."""

from __future__ import annotations

import base64
import io
import logging
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from scan_files import dicom_bytes

from braintumor.data.validate import inspect_file
from braintumor.model.predictor import Predictor
from braintumor.scans.library_notes import notes
from braintumor.scans.limits import ImageLimits
from braintumor.serving.requests import answer_request

QFAC = "pixdim[0] (qfac) should be 1 (default) or -1; setting qfac to 1"
PADDING = "The pixel data is 1088 bytes long, which indicates it contains 64 bytes of excess padding to be removed"


def odd_nifti(slices: int = 3) -> bytes:
    """A valid volume whose header's qfac is 0: nibabel logs (and fixes) it on every read."""
    volume = (np.arange(32 * 32 * slices).reshape(32, 32, slices) % 200).astype(np.float32)
    image = nib.Nifti1Image(volume, np.eye(4))
    image.header["pixdim"][0] = 0
    return image.to_bytes()


def odd_dicom() -> bytes:
    """A valid 32x32 picture with 64 bytes of padding after its pixels: pydicom warns and logs it when decoding."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes((np.arange(32 * 32).reshape(32, 32) % 200).astype(np.uint8))))
    ds.PixelData = ds.PixelData + bytes(64)
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


@pytest.fixture
def odd_files(tmp_path):
    (tmp_path / "odd.nii").write_bytes(odd_nifti())
    (tmp_path / "odd.dcm").write_bytes(odd_dicom())
    (tmp_path / "one-slice.nii").write_bytes(odd_nifti(1))
    return tmp_path / "odd.nii", tmp_path / "odd.dcm", tmp_path / "one-slice.nii"


def test_the_libraries_notes_are_gathered_and_nothing_of_theirs_reaches_stderr(odd_files, capsys):
    nifti, dicom, _ = odd_files
    with notes() as said:
        nib.Nifti1Image.from_bytes(nifti.read_bytes())
        pydicom.dcmread(dicom).pixel_array
    assert said == [QFAC, PADDING]  # pydicom both warned and logged it: once here
    assert capsys.readouterr().err == ""
    assert logging.getLogger("nibabel.global").propagate and logging.getLogger("pydicom").propagate  # put back
    with pytest.raises(ValueError), notes() as said:  # gathered also when the read fails
        nib.Nifti1Image.from_bytes(nifti.read_bytes())
        raise ValueError
    assert said == [QFAC]


def test_predict_says_a_files_notes_in_one_line_naming_it(odd_files, model_file):
    nifti, dicom, _ = odd_files
    done = subprocess.run(
        [sys.executable, "-m", "braintumor.cli", "predict", str(nifti), str(dicom), "--model", str(model_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(done.stderr.splitlines()) == [
        f"WARNING braintumor.scans.pictures: nibabel reading {nifti}: {QFAC}",
        f"WARNING braintumor.scans.pictures: pydicom reading {dicom}: {PADDING}",
    ]
    assert f"{nifti} [slice 0]" in done.stdout and f"{dicom}" in done.stdout


def test_validate_and_the_served_model_log_one_line_per_file(odd_files, model_file, caplog):
    nifti, _, one_slice = odd_files
    with caplog.at_level(logging.INFO):
        assert "problem" not in inspect_file(str(one_slice), ImageLimits())
        rows = [base64.b64encode(nifti.read_bytes()).decode("ascii")]
        assert list(answer_request(Predictor(model_file), pd.DataFrame({"image": rows}))["row"]) == [0, 0, 0]
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("braintumor.scans.pictures", f"nibabel reading {one_slice}: {QFAC}"),
        ("braintumor.scans.pictures", f"nibabel: {QFAC}"),
    ]
