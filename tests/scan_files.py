"""Scan files made in the test (no downloaded fixtures): DICOM and NIfTI with pydicom and nibabel, and the odd
formats the hostile-input tests send (a float TIFF, an EPS)."""

from __future__ import annotations

import gzip
import io

import nibabel as nib
import numpy as np
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1, MRImageStorage, generate_uid


def dicom_bytes(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", preamble: bool = True,
                **attributes) -> bytes:
    """A DICOM Part 10 MR image of `pixels` ((R, C) or (F, R, C), uint8, uint16 or int16), with file meta.

    `attributes` are set on the dataset (RescaleSlope=2, WindowCenter=40, ...)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128 if preamble else None)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName = "MR", "Test^Synthetic"
    bits = {np.dtype(np.uint8): 8}.get(pixels.dtype, 16)
    ds.set_pixel_data(np.ascontiguousarray(pixels), photometric, bits)
    for key, value in attributes.items():
        setattr(ds, key, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=preamble)
    return buffer.getvalue()


def compressed_dicom_bytes(rows: int = 8, columns: int = 8) -> bytes:
    """A DICOM whose pixel data claims JPEG Lossless (Process 14, SV1): no decoder for it is installed here."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGLosslessSV1
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + bytes(32) + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def nifti_bytes(volume: np.ndarray, affine: np.ndarray | None = None, *, gz: bool = False, **header) -> bytes:
    """A NIfTI-1 single file (.nii, or .nii.gz with gz) of `volume`, RAS+ 1 mm voxels unless `affine` says."""
    image = nib.Nifti1Image(volume, np.eye(4) if affine is None else affine)
    for key, value in header.items():
        image.header[key] = value
    data = image.to_bytes()
    return gzip.compress(data, mtime=0) if gz else data


def float_tiff(pixels: np.ndarray) -> bytes:
    """A 32-bit float TIFF of `pixels` (NaN and inf allowed: what a broken export writes)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.float32), mode="F").save(buffer, format="TIFF")
    return buffer.getvalue()


def eps() -> bytes:
    """A real EPS file (PostScript), as Pillow writes it; Pillow would render it by running Ghostscript."""
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 120).save(buffer, format="EPS")
    return buffer.getvalue()
