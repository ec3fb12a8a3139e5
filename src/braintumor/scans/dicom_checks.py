"""What a DICOM file's own bytes must agree with before pydicom decodes them (dicom.py calls these).

pydicom trusts a file's structure: it inflates a Deflated data set whole, decodes an RLE segment to its end, and
hands an embedded JPEG to Pillow whatever size its own header says. Each check here compares what the file
carries with what its DICOM header (Rows x Columns x frames) promises, and refuses the file by name before any
pixel is decoded:

- **Deflated Explicit VR Little Endian**: inflated no further than the header promises (`read_deflated`).
- **RLE Lossless**: each frame's segment count and each segment's compressed length (a segment of R rows of C pixels
  takes at most R x (C + C/128) + 1 bytes; a longer one expands past the frame).
- **JPEG, JPEG-LS, JPEG 2000**: the size in each frame's own header (SOF or SIZ marker) must be Rows x Columns.
"""

from __future__ import annotations

import io
import struct
import zlib

from braintumor.scans.limits import ImageProblem

HEAD_BYTES = 1 << 20  # a data set's elements before the pixel data: kilobytes in practice
SLACK_BYTES = 1 << 20  # elements after the pixel data (overlays are in the pixel budget's order, padding)
JPEG_SYNTAXES = (
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
)
J2K_SYNTAXES = (
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
)
RLE_SYNTAX = "1.2.840.10008.1.2.5"
DEFLATED_SYNTAX = "1.2.840.10008.1.2.1.99"
_PIXEL_DATA = 0x7FE00010


def pixel_bytes(ds) -> int:
    """The bytes the header says the pixel data decodes to: Rows x Columns x frames x samples x bytes each."""
    bits = int(ds.get("BitsAllocated") or 8)
    pixels = int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames") or 1) * int(ds.get("SamplesPerPixel") or 1)
    return (pixels * bits + 7) // 8


def is_deflated(data: bytes) -> bool:
    """A Part 10 file whose file meta names the Deflated transfer syntax (its data set is one deflate stream)."""
    if data[128:132] != b"DICM" or DEFLATED_SYNTAX.encode() not in data[132:4096]:
        return False
    from pydicom.filereader import _read_file_meta_info

    fp = io.BytesIO(data)
    fp.seek(132)
    try:
        return _read_file_meta_info(fp).get("TransferSyntaxUID") == DEFLATED_SYNTAX
    except Exception:  # a broken file meta: dcmread says what is wrong with it
        return False


def read_deflated(data: bytes, check_header):
    """The data set of a Deflated Part 10 file, inflated only as far as its header promises.

    `check_header(ds)` is called on the elements before the pixel data (the limits on frames and pixels); the rest
    is inflated up to those elements + the pixel bytes they promise + 1 MiB, and a stream that goes on is refused.
    pydicom itself would inflate the whole stream first (1 MB can hold 1 GiB)."""
    from pydicom.dataset import FileDataset
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble  # the file meta's reader

    fp = io.BytesIO(data)
    preamble = read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    stream = zlib.decompressobj(-zlib.MAX_WBITS)
    compressed = data[fp.tell() :]
    try:
        inflated = stream.decompress(compressed, HEAD_BYTES)
    except zlib.error as exc:
        raise ImageProblem(f"corrupt deflate stream in a Deflated DICOM file ({exc})") from None
    reached = []
    head = read_dataset(
        io.BytesIO(inflated),
        False,
        True,
        stop_when=lambda tag, vr, length: bool(reached.append(tag)) or tag == _PIXEL_DATA,
    )
    if _PIXEL_DATA not in reached:
        raise ImageProblem(
            f"a Deflated DICOM file whose elements before the pixel data inflate past "
            f"{HEAD_BYTES:,} bytes (a deflate bomb?); convert it to an uncompressed syntax "
            "(e.g. `gdcmconv --raw`)"
        )
    check_header(head)
    bound = HEAD_BYTES + pixel_bytes(head) + SLACK_BYTES
    try:
        inflated += stream.decompress(stream.unconsumed_tail, bound + 1 - len(inflated))
    except zlib.error as exc:
        raise ImageProblem(f"corrupt deflate stream in a Deflated DICOM file ({exc})") from None
    if len(inflated) > bound:
        raise ImageProblem(
            f"a Deflated DICOM file that inflates past {bound:,} bytes, more than its header "
            f"promises ({int(head.Columns)}x{int(head.Rows)}, "
            f"{int(head.get('NumberOfFrames') or 1)} frames: {pixel_bytes(head):,} pixel bytes); a "
            "deflate bomb or a corrupt file"
        )
    dataset = read_dataset(io.BytesIO(inflated), False, True)
    return FileDataset(None, dataset, preamble, meta, False, True)


def check_encapsulated(ds, syntax: str) -> None:
    """RLE segments and JPEG/JPEG 2000 headers against Rows x Columns, frame by frame, before decoding."""
    if syntax != RLE_SYNTAX and syntax not in JPEG_SYNTAXES + J2K_SYNTAXES:
        return
    from pydicom.encaps import generate_frames

    rows, columns, frames = int(ds.Rows), int(ds.Columns), int(ds.get("NumberOfFrames") or 1)
    try:
        for index, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=frames)):
            if index >= frames:
                break
            if syntax == RLE_SYNTAX:
                _check_rle(frame, ds, index)
            else:
                size = _jpeg_size(frame) if syntax in JPEG_SYNTAXES else _j2k_size(frame)
                if size is None:
                    raise ImageProblem(
                        f"frame {index}: no JPEG{' 2000' if syntax in J2K_SYNTAXES else ''} "
                        "header in the DICOM pixel data: a corrupt file"
                    )
                if size != (columns, rows):
                    raise ImageProblem(
                        f"frame {index}: the embedded image is {size[0]}x{size[1]}, but the DICOM "
                        f"header says {columns}x{rows} (Columns x Rows): a corrupt or crafted file, "
                        "refused before decoding; export the scan again"
                    )
    except ImageProblem:
        raise
    except Exception as exc:  # pydicom's fragment parser on a broken item structure
        raise ImageProblem(f"unreadable encapsulated DICOM pixel data ({type(exc).__name__}: {exc})") from None


def _check_rle(frame: bytes, ds, index: int) -> None:
    """PS3.5 G: a 64-byte header (segment count, 15 offsets), then one segment per byte plane of the frame."""
    if len(frame) < 64:
        raise ImageProblem(f"frame {index}: an RLE frame of {len(frame)} bytes has no 64-byte RLE header")
    count, *offsets = struct.unpack("<16L", frame[:64])
    expected = int(ds.get("SamplesPerPixel") or 1) * ((int(ds.get("BitsAllocated") or 8) + 7) // 8)
    if count != expected:
        raise ImageProblem(
            f"frame {index}: {count} RLE segments, but the DICOM header's samples and bits call for "
            f"{expected}: a corrupt file"
        )
    columns = int(ds.Columns)
    # all literal runs, row by row as encoders write them (one header byte per 128 bytes of a row), and a pad byte
    longest = int(ds.Rows) * (columns + -(-columns // 128)) + 1
    ends = offsets[1:count] + [len(frame)]
    for segment, (start, end) in enumerate(zip(offsets[:count], ends)):
        if not 64 <= start <= end <= len(frame) or end - start > longest:
            raise ImageProblem(
                f"frame {index}: RLE segment {segment} is {end - start:,} bytes (from offset {start:,}),"
                f" but a {int(ds.Columns)}x{int(ds.Rows)} plane takes at most {longest:,}: it would "
                "expand past the frame (an RLE bomb?) or is corrupt; refused before decoding"
            )


def _jpeg_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) from the first SOF marker (baseline, extended, lossless, JPEG-LS), walking the markers."""
    pos = 2 if frame[:2] == b"\xff\xd8" else None
    while pos is not None and pos + 4 <= len(frame):
        if frame[pos] != 0xFF:
            return None
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(frame[pos + 2 : pos + 4], "big")
        if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
            if pos + 9 > len(frame):
                return None
            height, width = struct.unpack(">HH", frame[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    return None


def _j2k_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) from the codestream's SIZ marker (a bare codestream, or inside a JP2 file)."""
    start = frame.find(b"\xff\x4f\xff\x51")
    if start < 0 or start + 24 > len(frame):
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">4L", frame[start + 8 : start + 24])
    return xsiz - xosiz, ysiz - yosiz
