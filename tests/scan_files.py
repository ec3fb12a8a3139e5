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


def dicom_bytes(pixels: np.ndarray, *, photometric: str = "MONOCHROME2", preamble: bool = True, **attributes) -> bytes:
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


# ---- crafted bombs (tests/test_format_bombs.py): small files whose headers lie about what they expand to --------


def deflated_dicom_bytes(pixels: np.ndarray, *, trailing_zeros: int = 0) -> bytes:
    """`pixels` as a Deflated Explicit VR Little Endian DICOM; `trailing_zeros` bytes of Data Set Trailing Padding
    (FFFC,FFFC) after the pixel data inflate from a few hundred kilobytes (a deflate bomb when large)."""
    import struct
    import zlib

    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = dcmread(io.BytesIO(dicom_bytes(pixels)))
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta = DicomBytesIO()
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [b"\0" * 128, b"DICM", meta.getvalue(), deflate.compress(body.getvalue())]
    if trailing_zeros:
        parts.append(deflate.compress(struct.pack("<HH2sHL", 0xFFFC, 0xFFFC, b"OB", 0, trailing_zeros)))
        chunk = bytes(1 << 20)
        for start in range(0, trailing_zeros, len(chunk)):
            parts.append(deflate.compress(chunk[: trailing_zeros - start]))
    parts.append(deflate.flush())
    return b"".join(parts)


def encapsulated_dicom_bytes(frames: list[bytes], syntax: str, *, rows: int, columns: int, bits: int = 8) -> bytes:
    """A DICOM MR image whose pixel data is `frames` (one compressed frame each) under transfer syntax `syntax`,
    with the header's Rows and Columns as given (whatever the frames really hold)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def jpeg_bytes(pixels: np.ndarray, *, claimed_size: tuple[int, int] | None = None) -> bytes:
    """A baseline JPEG of `pixels` (uint8, (R, C)); `claimed_size` (width, height) rewrites its SOF0 header, as a
    crafted file would (the decoder then allocates the claimed size)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=90)
    data = bytearray(buffer.getvalue())
    if claimed_size:
        sof = data.index(b"\xff\xc0")
        data[sof + 5 : sof + 9] = claimed_size[1].to_bytes(2, "big") + claimed_size[0].to_bytes(2, "big")
    return bytes(data)


def rle_bomb_frame(expands_to: int) -> bytes:
    """One RLE frame (PS3.5 G: 64-byte header, one segment) whose segment of 2-byte runs expands to `expands_to`
    bytes: 128 zeros per run."""
    import struct

    header = struct.pack("<16L", 1, 64, *([0] * 14))
    return header + b"\x81\x00" * (expands_to // 128)


def nifti_gz_of_zeros(shape: tuple[int, int, int], dtype: str) -> bytes:
    """A .nii.gz whose header says `shape` of `dtype` and whose voxels are all zero: a few hundred kilobytes for
    hundreds of megabytes of voxels, streamed (the volume is never in memory here)."""
    import zlib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["vox_offset"] = 352
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    gz = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [gz.compress(header.binaryblock + b"\0" * 4)]
    chunk = bytes(1 << 22)
    for start in range(0, size, len(chunk)):
        parts.append(gz.compress(chunk[: size - start]))
    parts.append(gz.flush())
    return b"".join(parts)
