"""Putting a dataset into data/: `braintumor import-data` (a folder or a zip) and `braintumor sample-data`.

Neither reads outside its source, overwrites or mixes into an existing dataset, or leaves half a dataset behind.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import signal
import stat
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
import yaml
from helpers import BIN, REPO
from PIL import Image

from braintumor.cli import main
from braintumor.data import importer
from braintumor.data.importer import import_dataset
from braintumor.data.sample import write_sample_dataset
from braintumor.errors import DataError

CLASSES = ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]
ALIASES = {
    "glioma": "glioma_tumor",
    "meningioma": "meningioma_tumor",
    "notumor": "no_tumor",
    "pituitary": "pituitary_tumor",
}
MAX_BYTES = 250_000_000
CHUNK_BYTES = 1 << 20  # importer.CHUNK: members up to this size skip the per-member ratio check


def jpeg(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (32, 32), shade).save(buffer, format="JPEG")
    return buffer.getvalue()


def kaggle_folder(root: Path, per_class: int = 2) -> Path:
    """The newer Kaggle layout: Training/ and Testing/ with glioma, meningioma, notumor, pituitary."""
    for split in ("Training", "Testing"):
        for k, name in enumerate(ALIASES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                (folder / f"{split[:2]}-{i:04d}.jpg").write_bytes(jpeg(10 * k + i))
    return root


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink())


def test_a_folder_is_imported_with_aliases_applied(tmp_path):
    source = kaggle_folder(tmp_path / "archive")
    result = import_dataset(source, tmp_path / "data", CLASSES, ALIASES, max_file_bytes=MAX_BYTES)
    assert result.counts == {"Training": 8, "Testing": 8} and result.skipped_links == []
    assert (tmp_path / "data" / "Training" / "no_tumor" / "Tr-0001.jpg").read_bytes() == jpeg(21)
    assert sorted(os.listdir(tmp_path / "data")) == ["Testing", "Training"]  # and no temporary folder


@pytest.mark.parametrize("fast_bf16, recipe", [(True, "cpu-scratch-bf16"), (False, "cpu-scratch")])
def test_import_data_names_the_from_scratch_recipe_for_this_cpu(tmp_path, capsys, monkeypatch, fast_bf16, recipe):
    from braintumor import runtime
    from braintumor.recipes import list_recipes

    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: fast_bf16)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"paths": {"data": "data"}, "data": {"aliases": ALIASES}}))
    monkeypatch.chdir(tmp_path)
    main(["import-data", str(kaggle_folder(tmp_path / "archive")), "--params", "params.yaml"])
    named = [
        line.split("braintumor recipe ")[1].split()[0]
        for line in capsys.readouterr().out.splitlines()
        if "from scratch" in line
    ]
    assert named == [recipe] and recipe in {r.name for r in list_recipes(REPO)}


# --- symbolic links -----------------------------------------------------------------------------------------------


def test_symbolic_links_in_the_source_are_skipped_named_and_never_read(tmp_path, capsys, monkeypatch):
    outside = tmp_path / "outside"
    (outside / "scans").mkdir(parents=True)
    (outside / "secret.jpg").write_bytes(b"not yours")
    (outside / "scans" / "x.jpg").write_bytes(jpeg(200))
    source = kaggle_folder(tmp_path / "archive")
    (source / "Training" / "glioma" / "leak.jpg").symlink_to(outside / "secret.jpg")
    (source / "Testing" / "meningioma" / "more").symlink_to(outside / "scans", target_is_directory=True)
    (source / "Training" / "pituitary_tumor").symlink_to(outside / "scans", target_is_directory=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"paths": {"data": "data"}, "data": {"aliases": ALIASES}}))
    monkeypatch.chdir(tmp_path)
    main(["import-data", str(source), "--params", "params.yaml"])
    out = capsys.readouterr().out
    assert (
        "import-data: skipped 3 symbolic link(s), never followed: Testing/meningioma/more, "
        "Training/glioma/leak.jpg, Training/pituitary_tumor"
    ) in out
    imported = files_under(tmp_path / "data")
    assert len(imported) == 16 and not any("leak" in p or "x.jpg" in p for p in imported)
    assert not any(p.is_symlink() for p in (tmp_path / "data").rglob("*"))


def test_a_symlinked_split_folder_is_not_followed(tmp_path):
    real = kaggle_folder(tmp_path / "elsewhere")
    source = tmp_path / "archive"
    source.mkdir()
    (source / "Training").symlink_to(real / "Training", target_is_directory=True)
    (source / "Testing").symlink_to(real / "Testing", target_is_directory=True)
    with pytest.raises(
        DataError,
        match=r"no Training/ folder found in .*archive \(symbolic links are not followed: "
        r"Testing, Training\)",
    ):
        import_dataset(source, tmp_path / "data", CLASSES, ALIASES, max_file_bytes=MAX_BYTES)
    assert not (tmp_path / "data" / "Training").exists()


def test_symlink_members_of_a_zip_are_skipped(tmp_path):
    archive = tmp_path / "archive.zip"
    source = kaggle_folder(tmp_path / "src")
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(source.rglob("*.jpg")):
            zf.write(path, path.relative_to(source).as_posix())
        link = zipfile.ZipInfo("Training/glioma/leak.jpg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    result = import_dataset(archive, tmp_path / "data", CLASSES, ALIASES, max_file_bytes=MAX_BYTES)
    assert result.skipped_links == ["Training/glioma/leak.jpg"]
    assert not (tmp_path / "data" / "Training" / "glioma_tumor" / "leak.jpg").exists()


# --- two sources, one destination ---------------------------------------------------------------------------------


def test_an_alias_and_its_class_holding_the_same_file_name_fail_before_anything_is_copied(tmp_path):
    source = kaggle_folder(tmp_path / "archive")
    (source / "Training" / "no_tumor").mkdir()
    (source / "Training" / "no_tumor" / "Tr-0001.jpg").write_bytes(jpeg(99))
    with pytest.raises(DataError) as caught:
        import_dataset(source, tmp_path / "data", CLASSES, ALIASES, max_file_bytes=MAX_BYTES)
    assert (
        "Training/no_tumor/Tr-0001.jpg and Training/notumor/Tr-0001.jpg would both be copied to "
        "Training/no_tumor/Tr-0001.jpg"
    ) in str(caught.value)
    assert not (tmp_path / "data").exists()


# --- all or nothing -----------------------------------------------------------------------------------------------


def _fail_on_third_file(monkeypatch, error: BaseException) -> None:
    real, calls = importer._copy, []

    def copy(entry, path):
        calls.append(path)
        if len(calls) == 3:
            path.write_bytes(b"half a fi")  # what a full disk leaves
            raise error
        real(entry, path)

    monkeypatch.setattr(importer, "_copy", copy)


def test_a_failed_copy_leaves_nothing_behind_and_the_rerun_works(tmp_path, monkeypatch):
    source = kaggle_folder(tmp_path / "archive")
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / ".gitignore").write_text("/Training\n/Testing\n")
    _fail_on_third_file(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    with pytest.raises(
        DataError,
        match=r"copying Training/meningioma/Tr-0000.jpg from .*archive failed \(No space left on device\); nothing was "
        r"imported",
    ):
        import_dataset(source, dest, CLASSES, ALIASES, max_file_bytes=MAX_BYTES)
    assert sorted(os.listdir(dest)) == [".gitignore"]  # no half file, no Training/, no temporary folder
    monkeypatch.undo()
    assert import_dataset(source, dest, CLASSES, ALIASES, max_file_bytes=MAX_BYTES).counts["Training"] == 8


def test_ctrl_c_during_an_import_leaves_nothing_behind(tmp_path, monkeypatch):
    source = kaggle_folder(tmp_path / "archive")
    _fail_on_third_file(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        import_dataset(source, tmp_path / "data", CLASSES, ALIASES, max_file_bytes=MAX_BYTES)
    assert os.listdir(tmp_path / "data") == []


# --- zips ---------------------------------------------------------------------------------------------------------


def test_a_corrupt_zip_is_a_clear_error_not_a_zlib_traceback(tmp_path):
    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("Training/glioma/a.jpg", b"\x00" * 5000 + jpeg(1))
        zf.writestr("Testing/glioma/b.jpg", jpeg(2))
    data = bytearray(archive.read_bytes())
    start = data.index(b"Training/glioma/a.jpg") + len("Training/glioma/a.jpg")
    data[start + 2 : start + 40] = os.urandom(38)  # garbage in the deflate stream of the first member
    archive.write_bytes(bytes(data))
    with pytest.raises(
        DataError,
        match=r"archive.zip is a damaged or unsupported zip file \(.*\); nothing was "
        r"imported",
    ):
        import_dataset(archive, tmp_path / "data", ["glioma", "other"], {}, max_file_bytes=MAX_BYTES)
    assert os.listdir(tmp_path / "data") == []


def test_a_zip_bomb_member_is_refused_before_extraction(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("Training/glioma/a.jpg", jpeg(1))
        zf.writestr("Testing/glioma/bomb.bmp", b"\x00" * 50_000_000)  # 50 MB in about 50 kB
    assert archive.stat().st_size < 200_000
    with pytest.raises(
        DataError,
        match=r"member Testing/glioma/bomb.bmp inflates 1,0\d\d times \([\d,]+ -> 50,000,000 "
        r"bytes\), more than any image file",
    ):
        import_dataset(archive, tmp_path / "data", ["glioma", "other"], {}, max_file_bytes=MAX_BYTES)
    with pytest.raises(DataError, match=r"would extract to 50,000,000 bytes, over data.max_file_bytes=1,000,000"):
        import_dataset(archive, tmp_path / "data", ["glioma", "other"], {}, max_file_bytes=1_000_000)
    assert not (tmp_path / "data" / "Training").exists()


def test_an_import_bigger_than_the_free_disk_is_refused_before_anything_is_copied(tmp_path, monkeypatch):
    # Many members, each under the size and ratio limits, can still add up to more than the disk holds.
    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(20):
            zf.writestr(f"Training/glioma/{i:02d}.bmp", os.urandom(100_000))
        zf.writestr("Testing/glioma/b.jpg", jpeg(2))
    real_usage = shutil.disk_usage
    monkeypatch.setattr(
        importer.shutil, "disk_usage", lambda path: real_usage(path)._replace(free=1_500_000)
    )  # a nearly full disk
    total = 20 * 100_000 + len(jpeg(2))
    with pytest.raises(
        DataError,
        match=rf"archive.zip: the images take {total:,} bytes, more than the 1,500,000 "
        r"bytes free on the disk of .*data; nothing was imported",
    ):
        import_dataset(archive, tmp_path / "data", ["glioma", "other"], {}, max_file_bytes=MAX_BYTES)
    assert os.listdir(tmp_path / "data") == []


def test_only_image_members_of_a_zip_are_extracted(tmp_path):
    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("Training/glioma/a.jpg", jpeg(1))
        zf.writestr("Testing/glioma/b.jpg", jpeg(2))
        zf.writestr("Training/glioma/notes.bin", b"\x00" * 50_000_000)  # would be a bomb, is never read
        zf.writestr("../../outside.jpg", jpeg(3))
        zf.writestr("__MACOSX/Training/glioma/._a.jpg", b"resource fork")
    result = import_dataset(archive, tmp_path / "data", ["glioma", "other"], {}, max_file_bytes=MAX_BYTES)
    assert result.counts == {"Training": 1, "Testing": 1}
    assert files_under(tmp_path / "data") == ["Testing/glioma/b.jpg", "Training/glioma/a.jpg"]
    assert not (tmp_path / "outside.jpg").exists()


# --- sample-data --------------------------------------------------------------------------------------------------


def test_sample_data_refuses_a_folder_that_holds_a_dataset(tmp_path, capsys):
    real = kaggle_folder(tmp_path / "data")
    before = {p: p.read_bytes() for p in real.rglob("*.jpg")}
    with pytest.raises(SystemExit) as caught:
        main(["sample-data", str(real), "--per-class", "2", "--size", "32"])
    assert caught.value.code == 2
    assert (
        f"error: {real} already holds a dataset (Training/ or Testing/ with files in it); nothing was written"
        in capsys.readouterr().err
    )
    assert {p: p.read_bytes() for p in real.rglob("*.jpg")} == before  # no synthetic scan mixed in


def test_sample_data_interrupted_leaves_no_dataset(tmp_path, monkeypatch):
    from braintumor.data import sample

    real, calls = sample.synthetic_slice, []

    def slice_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sample, "synthetic_slice", slice_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_sample_dataset(tmp_path / "data", per_class=2, test_per_class=2, size=32)
    assert os.listdir(tmp_path / "data") == []  # `make run` will write the sample again, not find half of one
    monkeypatch.undo()
    assert write_sample_dataset(tmp_path / "data", per_class=2, test_per_class=2, size=32) == {
        "Training": 8,
        "Testing": 8,
    }


def test_ctrl_c_of_sample_data_prints_what_is_true_and_leaves_no_dataset(tmp_path):
    target = tmp_path / "data"
    # Ctrl-C's default action even where this runs as a background job (which starts with SIGINT ignored, and
    # then Python never raises KeyboardInterrupt)
    proc = subprocess.Popen(
        [str(BIN / "braintumor"), "sample-data", str(target), "--per-class", "2000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(target.glob(".incomplete-*/Training/*/*.jpg")):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted: no output was left half-written")
    assert "Traceback" not in err
    assert os.listdir(target) == []


# --- issue 28, rows 8-12: the whole archive, DICOM by its bytes, a killed run's leftovers, names ---------------------


def test_many_small_members_that_inflate_together_are_refused(tmp_path):
    """Each 1 MB member is at the per-member check's floor; together they are a zip bomb."""
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("Training/glioma/a.jpg", jpeg(1))
        for i in range(60):
            zf.writestr(f"Training/glioma/{i:03d}.bmp", bytes(CHUNK_BYTES))
    assert archive.stat().st_size < 200_000
    with pytest.raises(DataError, match=r"its 61 image members inflate [\d,]+ times together .*nothing was imported"):
        import_dataset(archive, tmp_path / "data", ["glioma", "other"], {}, max_file_bytes=MAX_BYTES)
    assert not (tmp_path / "data").exists() or files_under(tmp_path / "data") == []


def dicom_file() -> bytes:
    import numpy as np
    from scan_files import dicom_bytes

    return dicom_bytes((np.arange(32 * 32).reshape(32, 32) % 200).astype(np.uint8))


@pytest.mark.parametrize("kind", ["zip", "folder"])
def test_extension_less_dicoms_are_imported_by_their_own_bytes(tmp_path, kind, monkeypatch):
    source = kaggle_folder(tmp_path / "src", per_class=1)
    scan = dicom_file()
    (source / "Training" / "glioma" / "IM0001").write_bytes(scan)
    (source / "Testing" / "glioma" / "1.2.840.113619.2.55.3.12").write_bytes(dicom_file())
    (source / "Training" / "glioma" / "README").write_bytes(b"not a scan")
    if kind == "zip":
        archive = tmp_path / "src.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for path in sorted(p for p in source.rglob("*") if p.is_file()):
                zf.write(path, path.relative_to(source).as_posix())
        source = archive
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    monkeypatch.chdir(outside)  # the member's own bytes decide, not a file of that name in the working directory
    result = import_dataset(source, tmp_path / "data", CLASSES, ALIASES, max_file_bytes=MAX_BYTES)
    assert result.counts == {"Training": 5, "Testing": 5}
    assert (tmp_path / "data/Training/glioma_tumor/IM0001").read_bytes() == scan
    assert (tmp_path / "data/Testing/glioma_tumor/1.2.840.113619.2.55.3.12").is_file()
    assert not (tmp_path / "data/Training/glioma_tumor/README").exists()


def test_a_killed_runs_staging_folder_is_removed_by_the_next_run_and_a_live_ones_kept(tmp_path, caplog):
    import socket

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    stale, live = tmp_path / "data" / ".incomplete-killed", tmp_path / "data" / ".incomplete-running"
    for folder, pid in ((stale, dead.pid), (live, os.getpid())):
        (folder / "Training").mkdir(parents=True)
        (folder / ".owner").write_text(f"{pid}@{socket.gethostname()}\n")
    import_dataset(
        kaggle_folder(tmp_path / "src", per_class=1), tmp_path / "data", CLASSES, ALIASES, max_file_bytes=MAX_BYTES
    )
    assert not stale.exists() and live.is_dir()
    assert any("left by an interrupted run" in r.getMessage() for r in caplog.records)
    assert any("another run's unfinished copy" in r.getMessage() for r in caplog.records)


def test_a_name_that_is_both_a_file_and_a_folder_is_refused_before_copying(tmp_path):
    archive = tmp_path / "clash.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("Training/glioma/a.jpg", jpeg(1))
        zf.writestr("Training/glioma/a.jpg/b.jpg", jpeg(2))
        zf.writestr("Testing/glioma/c.jpg", jpeg(3))
    with pytest.raises(
        DataError,
        match=r"Training/glioma/a.jpg is a file, but another member puts .* inside a "
        r"folder of that name; nothing was copied",
    ):
        import_dataset(archive, tmp_path / "data", ["glioma", "other"], {}, max_file_bytes=MAX_BYTES)
    assert not (tmp_path / "data" / "Training").exists()


def test_names_with_a_colon_or_a_control_character_are_refused_and_printed_escaped(tmp_path):
    archive = tmp_path / "names.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("Training/glioma/C:\\x.jpg", jpeg(1))
        zf.writestr("Testing/glioma/c.jpg", jpeg(3))
    with pytest.raises(DataError, match=r"has a ':' or a control character in its name"):
        import_dataset(archive, tmp_path / "data", ["glioma", "other"], {}, max_file_bytes=MAX_BYTES)
    source = kaggle_folder(tmp_path / "src", per_class=1)
    (source / "Training" / "glioma" / "evil\x1b[2J\n.jpg").write_bytes(jpeg(4))
    with pytest.raises(DataError, match=r"has a control character \(newline, tab, ESC, ...\) in its name") as caught:
        import_dataset(source, tmp_path / "data2", CLASSES, ALIASES, max_file_bytes=MAX_BYTES)
    assert "\x1b" not in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "data" / "Training").exists() and not (tmp_path / "data2" / "Training").exists()
