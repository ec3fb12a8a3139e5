"""`braintumor import-data`: copy a dataset (a folder or the Kaggle zip) into data/, class aliases applied.

Never overwrites: an existing data/Training or data/Testing stops the import, and the source is only read.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path

from braintumor.data.scan import SPLIT_FOLDERS
from braintumor.errors import DataError
from braintumor.imaging import is_candidate


def import_dataset(source: str | Path, dest: str | Path, classes: list[str], aliases: dict[str, str]) -> dict[str, int]:
    source, dest = Path(source), Path(dest)
    for folder in SPLIT_FOLDERS.values():
        if (dest / folder).exists():
            raise DataError(f"{dest / folder} already exists; nothing was copied. Move it away first "
                            "(or `dvc remove`/`git rm` it if versioned) to import a new dataset.")
    if zipfile.is_zipfile(source):
        with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(source) as archive:
            archive.extractall(tmp)
            return _copy_tree(Path(tmp), dest, classes, aliases, origin=str(source))
    if not source.is_dir():
        raise DataError(f"{source} is neither a folder nor a zip file")
    return _copy_tree(source, dest, classes, aliases, origin=str(source))


def _find_split(root: Path, name: str) -> Path | None:
    """The shallowest folder called Training/Testing (any case) under root."""
    matches = sorted((p for p in root.rglob("*") if p.is_dir() and p.name.lower() == name.lower()),
                     key=lambda p: len(p.parts))
    return matches[0] if matches else None


def _copy_tree(root: Path, dest: Path, classes: list[str], aliases: dict[str, str], origin: str) -> dict[str, int]:
    plan: list[tuple[Path, Path]] = []
    for folder in SPLIT_FOLDERS.values():
        split = _find_split(root, folder)
        if split is None:
            raise DataError(f"no {folder}/ folder found in {origin}; expected {folder}/<class>/ image folders")
        for class_dir in sorted(p for p in split.iterdir() if p.is_dir() and not p.name.startswith(".")):
            label = class_dir.name if class_dir.name in classes else aliases.get(class_dir.name)
            if label is None:
                raise DataError(f"{origin}: class folder {class_dir.relative_to(root)} is not one of {classes}; add "
                                f"an alias in params.yaml (data.aliases: {{{class_dir.name}: <class>}}). Nothing copied.")
            plan += [(f, dest / folder / label / f.relative_to(class_dir))
                     for f in sorted(class_dir.rglob("*")) if f.is_file() and is_candidate(f)]
    counts: dict[str, int] = {}
    for src, dst in plan:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        split = dst.relative_to(dest).parts[0]
        counts[split] = counts.get(split, 0) + 1
    return counts
