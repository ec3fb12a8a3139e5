"""`braintumor import-data`: copy a dataset (a folder or the Kaggle zip) into data/, class aliases applied.

Never overwrites and never reads outside the source: an existing data/Training or data/Testing stops the import,
symbolic links in the source are skipped and named, and two source files that would land on one destination
stop it before anything is copied. Everything is copied into a hidden folder next to the destination and renamed
into place at the end, so a failure (disk full) or Ctrl-C leaves nothing half-imported. From a zip, only image
members are extracted, each within data.max_file_bytes and a compression ratio no image reaches.
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from braintumor.data.scan import SPLIT_FOLDERS
from braintumor.errors import DataError, escaped
from braintumor.fileio import staged_folders
from braintumor.scans.read import is_candidate

# Image files compress little (JPEG, PNG: about 1x; an uncompressed BMP or TIFF of a scan: a few x). A member
# that inflates more than this is a zip bomb, not a scan.
MAX_COMPRESSION_RATIO = 100
CHUNK = 1 << 20
# Folders that archivers add next to the data (macOS's resource forks): never a dataset.
SKIPPED_FOLDERS = frozenset({"__macosx"})


@dataclass
class ImportResult:
    counts: dict[str, int]  # files copied per split folder (Training, Testing)
    skipped_links: list[str] = field(default_factory=list)  # symbolic links in the source, not followed


@dataclass(frozen=True)
class _Entry:
    """One file of the source: its path inside the source (POSIX parts), its size and how to read it."""

    parts: tuple[str, ...]
    size: int
    open: Callable[[], BinaryIO]
    scan: bool = True  # a scan by its name or, for extension-less DICOM names (IM0001), by its own first bytes


def import_dataset(
    source: str | Path, dest: str | Path, classes: list[str], aliases: dict[str, str], *, max_file_bytes: int
) -> ImportResult:
    source, dest = Path(source), Path(dest)
    for folder in SPLIT_FOLDERS.values():
        if os.path.lexists(dest / folder):
            raise DataError(
                f"{dest / folder} already exists; nothing was copied. Move it away first "
                "(or `dvc remove`/`git rm` it if versioned) to import a new dataset."
            )
    if source.is_file() and zipfile.is_zipfile(source):
        try:
            with zipfile.ZipFile(source) as archive:
                entries, links = _zip_entries(archive, max_file_bytes, origin=str(source))
                return _import(entries, links, dest, classes, aliases, origin=str(source))
        except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError) as exc:  # RuntimeError: encrypted
            raise DataError(
                f"{source} is a damaged or unsupported zip file ({type(exc).__name__}: {exc}); nothing "
                "was imported. Download it again, or unzip it yourself and import the folder."
            ) from None
    if not source.is_dir():
        raise DataError(f"{source} is neither a folder nor a zip file")
    entries, links = _folder_entries(source)
    return _import(entries, links, dest, classes, aliases, origin=str(source))


def _folder_entries(root: Path) -> tuple[list[_Entry], list[str]]:
    """Every regular file under `root`, without following symbolic links (which are returned, by name)."""
    entries, links = [], []
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        for name in sorted(dirs + files):
            path = here / name
            rel = path.relative_to(root)
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                links.append(escaped(rel.as_posix()))
            elif stat.S_ISREG(info.st_mode):
                entries.append(_Entry(rel.parts, info.st_size, lambda p=path: open(p, "rb"), is_candidate(path)))
        dirs[:] = sorted(d for d in dirs if not (here / d).is_symlink())
    return entries, sorted(links)


def _zip_entries(archive: zipfile.ZipFile, max_file_bytes: int, origin: str) -> tuple[list[_Entry], list[str]]:
    """The image members of the archive, refused when one is too big or inflates like a bomb."""
    entries, links = [], []
    total_size = total_compressed = 0
    for info in archive.infolist():
        if info.is_dir():
            continue
        parts = PurePosixPath(info.filename.replace("\\", "/")).parts
        if stat.S_ISLNK(info.external_attr >> 16):
            links.append(escaped(info.filename))
            continue
        if not parts or parts[0] == "/" or ".." in parts or not _is_scan_member(archive, info, parts[-1]):
            continue  # only image files are ever extracted, and never outside the destination
        if any(":" in part or not part.isprintable() for part in parts):
            raise DataError(
                f"{origin}: member {escaped(info.filename)} has a ':' or a control character in its "
                "name (on Windows 'C:' would leave the destination; a newline forges output lines); "
                "rename it. Nothing was imported."
            )
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            # zipfile bounds what deflate inflates per read; bzip2 and LZMA could inflate gigabytes in one read.
            raise DataError(
                f"{origin}: member {escaped(info.filename)} is compressed with method {info.compress_type}, not "
                "the usual deflate; unzip the archive yourself and import the folder. Nothing was "
                "imported."
            )
        if info.file_size > max_file_bytes:
            raise DataError(
                f"{origin}: member {escaped(info.filename)} would extract to {info.file_size:,} bytes, over "
                f"data.max_file_bytes={max_file_bytes:,}; nothing was imported."
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > CHUNK and ratio > MAX_COMPRESSION_RATIO:
            raise DataError(
                f"{origin}: member {escaped(info.filename)} inflates {ratio:,.0f} times ({info.compress_size:,} "
                f"-> {info.file_size:,} bytes), more than any image file (a zip bomb?); nothing was "
                "imported."
            )
        total_size, total_compressed = total_size + info.file_size, total_compressed + info.compress_size
        entries.append(_Entry(parts, info.file_size, lambda i=info: archive.open(i)))
    ratio = total_size / max(total_compressed, 1)
    if total_size > CHUNK and ratio > MAX_COMPRESSION_RATIO:  # many small members, each under the check above
        raise DataError(
            f"{origin}: its {len(entries):,} image members inflate {ratio:,.0f} times together "
            f"({total_compressed:,} -> {total_size:,} bytes), more than any image files (a zip bomb?); "
            "nothing was imported."
        )
    return entries, links


def _is_scan_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> bool:
    """A member to extract: a scan by its name, or an extension-less or UID-named one (IM0001,
    1.2.840.113619.2.55.3.12) that carries the DICOM preamble in its own first bytes."""
    return is_candidate(Path(name), head=lambda: _first_bytes(archive, info))


def _first_bytes(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        return b""  # refused below by name, whatever it holds
    try:
        with archive.open(info) as member:
            return member.read(132)
    except (zipfile.BadZipFile, zlib.error, OSError, RuntimeError):
        return b""


def _import(
    entries: list[_Entry], links: list[str], dest: Path, classes: list[str], aliases: dict[str, str], origin: str
) -> ImportResult:
    plan = _plan(entries, links, classes, aliases, origin)
    total = sum(entry.size for entry, _ in plan)
    dest.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(dest).free
    if total > free:
        raise DataError(
            f"{origin}: the images take {total:,} bytes, more than the {free:,} bytes free on the disk "
            f"of {dest}; nothing was imported. Free some space, or import onto another disk."
        )
    counts: dict[str, int] = {}
    with staged_folders(dest, list(SPLIT_FOLDERS.values())) as staging:
        for folder in SPLIT_FOLDERS.values():
            (staging / folder).mkdir()
        for entry, target in plan:
            path = staging.joinpath(*target)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                _copy(entry, path)
            except OSError as exc:
                raise DataError(
                    f"copying {escaped('/'.join(entry.parts))} from {origin} failed ({exc.strerror or exc}); "
                    f"nothing was imported, {dest} is as it was."
                ) from None
            counts[target[0]] = counts.get(target[0], 0) + 1
    return ImportResult(counts=counts, skipped_links=links)


def _plan(
    entries: list[_Entry], links: list[str], classes: list[str], aliases: dict[str, str], origin: str
) -> list[tuple[_Entry, tuple[str, ...]]]:
    """(source file, destination parts under dest) for every image, every problem found before any copy."""
    plan: list[tuple[_Entry, tuple[str, ...]]] = []
    for folder in SPLIT_FOLDERS.values():
        split = _find_split(entries, folder)
        if split is None:
            hint = f" (symbolic links are not followed: {', '.join(links[:5])})" if links else ""
            raise DataError(f"no {folder}/ folder found in {origin}{hint}; expected {folder}/<class>/ image folders")
        depth = len(split)
        for entry in entries:
            inside = entry.parts[depth:]
            if entry.parts[:depth] != split or len(inside) < 2 or inside[0].startswith("."):
                continue
            if any(part.startswith(".") for part in inside[1:-1]) or not entry.scan:
                continue  # hidden folders (.AppleDouble, ...) and non-images, as validate skips them
            if any(not part.isprintable() for part in inside):
                raise DataError(
                    f"{origin}: {escaped('/'.join(entry.parts))} has a control character (newline, tab, "
                    "ESC, ...) in its name; rename it. Nothing was copied."
                )
            label = inside[0] if inside[0] in classes else aliases.get(inside[0])
            if label is None:
                raise DataError(
                    f"{origin}: class folder {escaped('/'.join(split + inside[:1]))} is not one of {classes}; add "
                    f"an alias in params.yaml (data.aliases: {{{inside[0]}: <class>}}). Nothing copied."
                )
            plan.append((entry, (folder, label, *inside[1:])))
    seen: dict[tuple[str, ...], _Entry] = {}
    for entry, target in plan:
        key = tuple(part.casefold() for part in target)  # one file on case-insensitive disks (macOS, Windows)
        if key in seen:
            raise DataError(
                f"{origin}: {escaped('/'.join(seen[key].parts))} and {escaped('/'.join(entry.parts))} "
                "would both be copied "
                f"to {'/'.join(target)} (class aliases map both folders to {target[1]}); nothing was "
                "copied. Rename one of them."
            )
        seen[key] = entry
    folders = {key[:i]: target for key, (entry, target) in zip(seen, plan) for i in range(2, len(key))}
    for key, entry in seen.items():
        if key in folders:  # `a.jpg` and `a.jpg/b.jpg`: one name cannot be a file and a folder
            raise DataError(
                f"{origin}: {escaped('/'.join(entry.parts))} is a file, but another member puts "
                f"{escaped('/'.join(folders[key]))} inside a folder of that name; nothing was copied. "
                "Rename one of them."
            )
    return plan


def _find_split(entries: list[_Entry], name: str) -> tuple[str, ...] | None:
    """The shallowest folder called Training/Testing (any case) that holds files, outside archivers' folders."""
    found = set()
    for entry in entries:
        if any(part.casefold() in SKIPPED_FOLDERS for part in entry.parts):
            continue
        for i, part in enumerate(entry.parts[:-1]):
            if part.lower() == name.lower():
                found.add(entry.parts[: i + 1])
                break
    return min(found, key=lambda parts: (len(parts), parts)) if found else None


def _copy(entry: _Entry, path: Path) -> None:
    """Stream one file, never more bytes than its listed size (a zip member that lies about it fails its CRC)."""
    with entry.open() as src, open(path, "xb") as dst:
        left = entry.size
        while chunk := src.read(min(CHUNK, left + 1)):
            left -= len(chunk)
            if left < 0:
                raise OSError(f"{'/'.join(entry.parts)} grew while it was copied")
            dst.write(chunk)
