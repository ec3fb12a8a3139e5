"""NIfTI-1 and NIfTI-2 volumes (.nii, .nii.gz) -> 8-bit grayscale axial slices (nibabel).

RAS+ (nibabel's closest canonical orientation), scl_slope/scl_inter, the cal_min/cal_max display range when set,
else the volume's 0.5th-99.5th percentiles; slices inferior to superior, shown as radiology shows them. A .nii.gz
is inflated only as far as its header promises.
"""

from __future__ import annotations

import gzip
import io
import zlib

import numpy as np
from PIL import Image

from braintumor.scans.limits import (
    ImageLimits,
    ImageProblem,
    check_decoded_bytes,
    check_dimensions,
    check_finite,
    check_pixels,
)
from braintumor.scans.pictures import Pictures, percentile_window

_GZIP_MAGIC = b"\x1f\x8b"
MAX_NIFTI_OFFSET = 64 * 2**20  # header extensions (DICOM tags, JSON sidecars) are kilobytes; 64 MiB is generous


def read_nifti(data: bytes, *, limits: ImageLimits) -> Pictures:
    import nibabel as nib

    head = header_bytes(data)
    if head is None:
        raise ImageProblem("not a NIfTI-1 or NIfTI-2 file (no NIfTI header)")
    version, header_class, image_class = (
        (1, nib.Nifti1Header, nib.Nifti1Image) if _sizeof_hdr(head) == 348 else (2, nib.Nifti2Header, nib.Nifti2Image)
    )
    if head[344:348] == b"ni1\x00":
        raise ImageProblem("a NIfTI header whose voxels are in a separate .img file; save it as one .nii file")
    try:
        header = header_class(binaryblock=head[: header_class.template_dtype.itemsize])
        shape = tuple(int(n) for n in header.get_data_shape())
        itemsize = header.get_data_dtype().itemsize
        offset = max(int(header["vox_offset"]), header_class.template_dtype.itemsize + 4)  # voxels follow the header
    except Exception as exc:
        raise ImageProblem(f"unreadable NIfTI-{version} header ({type(exc).__name__}: {exc})") from None
    shape = _volume_shape(shape)
    if len(shape) > 3:
        raise ImageProblem(
            f"a {len(shape)}-D NIfTI image {'x'.join(map(str, shape))}: give one 3-D volume "
            "(e.g. the first of a series: `fslroi in.nii.gz out.nii.gz 0 1`)"
        )
    columns, rows, slices = (shape + (1, 1))[:3]
    check_pixels(rows, columns, slices, limits, unit="slices")
    check_decoded_bytes(
        rows * columns * slices,
        itemsize,
        limits,
        what=f"{columns}x{rows}x{slices} voxels of {itemsize} bytes ({header.get_data_dtype()})",
    )
    if not 0 <= offset <= MAX_NIFTI_OFFSET:  # the header and its extensions come first; bounds what is inflated
        raise ImageProblem(f"NIfTI vox_offset {offset:,} is outside 0..{MAX_NIFTI_OFFSET:,}: a corrupt header")
    needed = offset + int(np.prod(shape)) * itemsize
    raw = _bounded_bytes(data, needed)
    if len(raw) < needed:
        raise ImageProblem(f"truncated NIfTI file: the header promises {needed:,} bytes, the file holds {len(raw):,}")
    try:
        image = nib.as_closest_canonical(image_class.from_bytes(raw))  # RAS+: the third axis runs up the body
        volume = np.asarray(image.get_fdata(dtype=np.float32))  # scl_slope / scl_inter applied
        zooms = [float(z) for z in image.header.get_zooms()[:2]]
    except Exception as exc:
        raise ImageProblem(f"cannot read the NIfTI voxels ({type(exc).__name__}: {exc})") from None
    volume = volume.reshape(volume.shape[:3] if volume.ndim >= 3 else volume.shape + (1,) * (3 - volume.ndim))
    check_finite(volume)
    low, high = float(header["cal_min"]), float(header["cal_max"])
    shown = (
        np.clip((volume - low) / (high - low), 0, 1)
        if np.isfinite([low, high]).all() and high > low
        else percentile_window(volume)
    )
    gray = np.round(shown * 255.0).astype(np.uint8)
    images = [_axial_picture(gray[:, :, k], zooms, limits) for k in range(gray.shape[2])]
    description = f"NIfTI-{version} {'x'.join(map(str, gray.shape))} {header.get_data_dtype()}"
    return Pictures(images, list(range(len(images))), "nifti", description)


def _axial_picture(plane: np.ndarray, zooms: list[float], limits: ImageLimits) -> Image.Image:
    """An (X, Y) RAS+ plane -> the image radiology shows: rows anterior to posterior, columns patient's right to
    left; resampled to square pixels when the voxels are not square in-plane."""
    image = Image.fromarray(np.ascontiguousarray(plane[::-1, ::-1].T), mode="L")
    dx, dy = zooms if all(z > 0 and np.isfinite(z) for z in zooms) else (1.0, 1.0)
    if abs(dx - dy) > 0.01 * max(dx, dy):
        scale = min(dx, dy)
        size = (max(1, round(image.width * dx / scale)), max(1, round(image.height * dy / scale)))
        check_dimensions(*size, limits)  # before the resize allocates it
        image = image.resize(size, Image.BILINEAR)
    return image


def _volume_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Drop trailing dimensions of size 1 beyond the third ((X, Y, Z, 1) is a 3-D volume)."""
    shape = tuple(shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _sizeof_hdr(head: bytes) -> int:
    little, big = int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")
    return little if little in (348, 540) else big


def header_bytes(data: bytes) -> bytes | None:
    """The first 540 bytes (decompressed for .nii.gz) when they start a NIfTI-1 or NIfTI-2 file, else None."""
    head = data[:540]
    if data[:2] == _GZIP_MAGIC:
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[:65536], 540)
        except zlib.error:
            return None
    size = _sizeof_hdr(head) if len(head) >= 348 else 0
    if size == 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return head
    if size == 540 and head[4:8] == b"n+2\x00":
        return head
    return None


def _bounded_bytes(data: bytes, needed: int) -> bytes:
    """The file's bytes, decompressed for .nii.gz, never more than `needed` (a gzip bomb stops there)."""
    if data[:2] != _GZIP_MAGIC:
        return data[:needed]
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            return stream.read(needed)
    except (OSError, EOFError, zlib.error) as exc:
        raise ImageProblem(f"corrupt gzip stream in the NIfTI file ({type(exc).__name__}: {exc})") from None
