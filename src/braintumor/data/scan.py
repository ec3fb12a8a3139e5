"""Finding the scans: `<root>/Training/<class>/...` and `<root>/Testing/<class>/...`, class aliases applied.

Folder problems (a split or class missing, empty or unexpected) stop the pipeline with a message that names
the folder and says what to do. Nothing here writes to the dataset.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from braintumor.errors import DataError
from braintumor.scans.read import IGNORED_NAMES, is_candidate

SPLIT_FOLDERS = {"train": "Training", "test": "Testing"}


@dataclass(frozen=True)
class ScanFile:
    path: Path  # absolute
    relpath: str  # relative to the data root, POSIX separators: the key used in the manifest
    split: str  # "train" (from Training/) or "test" (from Testing/)
    label: str  # canonical class name (aliases resolved)


@dataclass
class ScanResult:
    files: list[ScanFile]
    ignored: list[str]  # non-image files (README.txt, ...) that were skipped, relative paths


def scan_dataset(root: str | Path, classes: list[str], aliases: dict[str, str]) -> ScanResult:
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"dataset folder {root.resolve()} does not exist. Put your scans in "
            f"{root}/Training/<class>/ and {root}/Testing/<class>/, or run `braintumor sample-data {root}` "
            "for the built-in sample."
        )
    files: list[ScanFile] = []
    ignored: list[str] = []
    for split, folder_name in SPLIT_FOLDERS.items():
        split_dir = root / folder_name
        if not split_dir.is_dir():
            present = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
            raise DataError(
                f"split folder {split_dir} is missing (found: {present or 'nothing'}). The dataset needs "
                f"both {root}/Training/<class>/ and {root}/Testing/<class>/."
            )
        found = scan_class_folders(split_dir, root, split, classes, aliases)
        files.extend(found.files)
        ignored.extend(found.ignored)
    return ScanResult(files=files, ignored=ignored)


def scan_class_folders(
    split_dir: Path, root: Path, split: str, classes: list[str], aliases: dict[str, str]
) -> ScanResult:
    """The scans in `split_dir/<class>/` (any depth below), with paths relative to `root`."""
    files: list[ScanFile] = []
    ignored: list[str] = []
    class_dirs = _class_folders(split_dir, classes, aliases)
    for label in classes:
        folders = class_dirs.get(label, [])
        if not folders:
            raise DataError(
                f"class folder {split_dir}/{label} is missing. Every class in data.classes "
                f"({', '.join(classes)}) needs a folder in {split_dir}/ (or an alias in data.aliases)."
            )
        found = []
        for folder in folders:
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                if any(part.startswith(".") for part in path.relative_to(folder).parts[:-1]):
                    continue  # inside a hidden folder (.AppleDouble, .thumbnails, ...): tool files, never data
                rel = path.relative_to(root).as_posix()
                if is_candidate(path):
                    found.append(ScanFile(path.resolve(), rel, split, label))
                elif path.name.lower() not in IGNORED_NAMES and not path.name.startswith("."):
                    ignored.append(rel)
        if not found:
            names = " and ".join(str(f) for f in folders)
            raise DataError(
                f"class folder {names} holds no image files (.jpg, .png, ...). "
                f"Add the {label} scans there, or remove {label} from data.classes."
            )
        files.extend(found)
    for path in sorted(p for p in split_dir.iterdir() if p.is_file() and is_candidate(p)):
        ignored.append(path.relative_to(root).as_posix())  # an image outside any class folder has no label
    return ScanResult(files=files, ignored=ignored)


def _class_folders(split_dir: Path, classes: list[str], aliases: dict[str, str]) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for folder in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        label = folder.name if folder.name in classes else aliases.get(folder.name)
        if label is None:
            guess = difflib.get_close_matches(folder.name.lower(), classes, n=1, cutoff=0.3)
            hint = (
                (
                    f"If it holds {guess[0]} scans, add to params.yaml:\n  data:\n    aliases:\n"
                    f"      {folder.name}: {guess[0]}"
                )
                if guess
                else "Move it out of the dataset or rename it."
            )
            raise DataError(
                f"unexpected class folder {folder}: {folder.name!r} is not one of data.classes "
                f"({', '.join(classes)}). {hint}"
            )
        found.setdefault(label, []).append(folder)
    return found
