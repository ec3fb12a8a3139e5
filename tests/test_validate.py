"""The validate stage: every broken file is reported (never deleted), duplicates and Train/Test leaks are found,
and the val split is carved from Training without splitting a group of copies."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import REPO, run, tiny_params, tiny_params_dict
from PIL import Image

from braintumor.data.sample import synthetic_slice, write_sample_dataset
from braintumor.data.splits import MANIFEST_COLUMNS, grouped_stratified_val, read_manifest, write_manifest
from braintumor.data.validate import validate_dataset
from braintumor.errors import BrainTumorError, DataError
from braintumor.scans.limits import ImageLimits, ImageProblem
from braintumor.scans.raster import to_grayscale
from braintumor.scans.read import decode_grayscale, is_candidate, open_checked

CLASSES = ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]
# The `sample_root` fixture: 6 Training and 3 Testing images per class, 64x64 grayscale JPEG.
N_TRAIN, N_TEST = 24, 12


def validate(root: Path, *, workers: int = 1, **data):
    return validate_dataset(root, tiny_params(root, data=data).data, workers=workers, progress=False)


def fresh_slice(seed: int, lesion: str = "none", size: int = 64) -> Image.Image:
    """A new synthetic scan, unlike any image in the sample."""
    return synthetic_slice(np.random.default_rng([4242, seed]), lesion, size=size)


def jpeg_bytes(image: Image.Image, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under root (hidden ones too) with the hash of its bytes."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def row(manifest: pd.DataFrame, path: str) -> pd.Series:
    rows = manifest[manifest["path"] == path]
    assert len(rows) == 1, f"{path} is in the manifest {len(rows)} times"
    return rows.iloc[0]


# Files no validation may accept, each with a phrase its reason must contain.
def add_bad_files(root: Path) -> dict[str, str]:
    original = (root / "Training/glioma_tumor/tr_0000.jpg").read_bytes()
    (root / "Training/glioma_tumor/garbage.jpg").write_bytes(np.random.default_rng(0).bytes(3000))
    (root / "Training/glioma_tumor/truncated.jpg").write_bytes(original[: len(original) // 2])
    (root / "Training/meningioma_tumor/empty.jpg").write_bytes(b"")
    (root / "Training/no_tumor/notes.jpg").write_text("this is a text file, not a scan\n", encoding="utf-8")
    fresh_slice(1).resize((400, 400)).save(root / "Testing/pituitary_tumor/huge.png")  # 160,000 pixels
    Image.new("LAB", (64, 64), (50, 0, 0)).save(root / "Training/pituitary_tumor/lab.tif")
    return {
        "Training/glioma_tumor/garbage.jpg": "not an image",
        "Training/glioma_tumor/truncated.jpg": "truncated",
        "Training/meningioma_tumor/empty.jpg": "empty file",
        "Training/no_tumor/notes.jpg": "not an image",
        "Testing/pituitary_tumor/huge.png": "data.max_image_pixels",
        "Training/pituitary_tumor/lab.tif": "unsupported image mode 'LAB'",
    }


# Files in unusual but supported modes: accepted, counted and listed in image_modes.
def add_odd_modes(root: Path) -> dict[str, str]:
    fresh_slice(2, "glioma").convert("CMYK").save(root / "Training/glioma_tumor/cmyk.jpg")
    deep = np.asarray(fresh_slice(3, "meningioma"), dtype=np.uint16) * 200  # 0..51000: a 16-bit scan
    Image.fromarray(deep).save(root / "Training/meningioma_tumor/deep.png")
    rgba = fresh_slice(4).convert("RGBA")
    rgba.putalpha(255)
    rgba.save(root / "Training/no_tumor/alpha.png")
    fresh_slice(5, "glioma").convert("P").save(root / "Testing/glioma_tumor/palette.png")
    return {
        "Training/glioma_tumor/cmyk.jpg": "CMYK",
        "Training/meningioma_tumor/deep.png": "I;16",
        "Training/no_tumor/alpha.png": "RGBA",
        "Testing/glioma_tumor/palette.png": "P",
    }


def add_junk(root: Path) -> None:
    (root / "Training/glioma_tumor/.DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "Testing/no_tumor/Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "Training/glioma_tumor/._tr_0000.jpg").write_bytes(b"\x00\x05\x16\x07")  # macOS AppleDouble
    # Hidden folders that tools keep next to images: resource forks and thumbnails, never scans.
    (root / "Training/glioma_tumor/.AppleDouble").mkdir()
    (root / "Training/glioma_tumor/.AppleDouble/tr_0000.jpg").write_bytes(b"\x00\x05\x16\x07resource fork")
    (root / "Testing/meningioma_tumor/.thumbnails").mkdir()
    shutil.copy(root / "Testing/meningioma_tumor/te_0000.jpg", root / "Testing/meningioma_tumor/.thumbnails/a.jpg")


# --- a clean dataset ---------------------------------------------------------------------------------------------


def test_clean_sample_report_and_manifest(dataset_copy):
    result = validate(dataset_copy)
    report, manifest = result.report, result.manifest
    assert report["n_train"] == N_TRAIN and report["n_test"] == N_TEST
    assert report["n_train_fit"] + report["n_val"] == N_TRAIN and report["n_val"] > 0
    assert report["n_excluded"] == 0 and report["excluded"] == [] and report["ignored_files"] == []
    assert report["image_modes"] == {"L": N_TRAIN + N_TEST}
    assert report["image_sizes"] == {"min": "64x64", "median": "64x64", "max": "64x64"}
    for split in ("train", "val", "test"):
        assert set(report["per_class"][split]) == set(CLASSES)
    assert report["per_class"]["test"] == {c: 3 for c in CLASSES}
    for c in CLASSES:
        assert report["per_class"]["train"][c] + report["per_class"]["val"][c] == 6
        assert report["per_class"]["val"][c] >= 1  # stratified: every class is represented in val
    assert report["exact_duplicates_in_train"] == report["near_duplicate_groups_in_train"] == 0
    assert report["test_exact_in_train"] == report["test_near_in_train"] == report["label_conflicts"] == 0
    assert report["test_leak_free"] == N_TEST
    json.dumps(report, allow_nan=False)  # the stage writes it as strict JSON

    assert set(MANIFEST_COLUMNS) <= set(manifest.columns) and len(manifest) == N_TRAIN + N_TEST
    for _, r in manifest.iterrows():
        assert (dataset_copy / r["path"]).is_file()
        assert r["split"] in (("test",) if r["path"].startswith("Testing/") else ("train", "val"))
        assert r["label"] == r["path"].split("/")[1]
        assert r["sha256"] == hashlib.sha256((dataset_copy / r["path"]).read_bytes()).hexdigest()
        assert (r["width"], r["height"], r["mode"]) == (64, 64, "L")
    assert manifest["group"].nunique() == len(manifest)  # no copies in the sample
    assert not manifest["exact_in_train"].any() and not manifest["near_in_train"].any()


def test_same_data_and_seed_give_the_same_split(dataset_copy):
    first = validate(dataset_copy).manifest
    second = validate(dataset_copy).manifest
    pd.testing.assert_frame_equal(first, second)
    reseeded = validate(dataset_copy, split_seed=7).manifest
    assert set(reseeded.loc[reseeded["split"] == "val", "path"]) != set(first.loc[first["split"] == "val", "path"])


# --- broken files ------------------------------------------------------------------------------------------------


def test_bad_files_are_excluded_with_a_reason_and_odd_modes_accepted(dataset_copy):
    bad = add_bad_files(dataset_copy)
    odd = add_odd_modes(dataset_copy)
    add_junk(dataset_copy)
    (dataset_copy / "Training/glioma_tumor/README.txt").write_text("notes\n", encoding="utf-8")
    fresh_slice(6).save(dataset_copy / "Training/stray.jpg")  # outside any class folder: no label
    result = validate(dataset_copy, max_image_pixels=100_000)
    report, manifest = result.report, result.manifest

    excluded = {e["path"]: e["reason"] for e in report["excluded"]}
    assert set(excluded) == set(bad)
    for path, phrase in bad.items():
        assert phrase in excluded[path], (path, excluded[path])
    assert report["n_excluded"] == len(bad)
    assert not set(bad) & set(manifest["path"])

    for path, mode in odd.items():
        r = row(manifest, path)
        assert r["mode"] == mode and (r["width"], r["height"]) == (64, 64)
    assert report["image_modes"] == {"CMYK": 1, "I;16": 1, "L": N_TRAIN + N_TEST, "P": 1, "RGBA": 1}
    assert report["n_train"] == N_TRAIN + 3 and report["n_test"] == N_TEST + 1

    # OS junk is skipped silently; other non-image files are listed so the user knows they were not used.
    assert sorted(report["ignored_files"]) == ["Training/glioma_tumor/README.txt", "Training/stray.jpg"]
    assert not any("/." in p or "Thumbs.db" in p for p in manifest["path"])
    assert report["test_exact_in_train"] == report["exact_duplicates_in_train"] == 0  # no thumbnail was read
    json.dumps(report, allow_nan=False)


def test_on_bad_file_fail_lists_every_bad_path_and_reason(dataset_copy):
    bad = add_bad_files(dataset_copy)
    add_odd_modes(dataset_copy)
    with pytest.raises(DataError) as info:
        validate(dataset_copy, max_image_pixels=100_000, on_bad_file="fail")
    message = str(info.value)
    assert f"{len(bad)} unusable image file(s)" in message
    for path, phrase in bad.items():
        line = next(line for line in message.splitlines() if path in line)
        assert phrase in line
    assert "on_bad_file: exclude" in message  # the way out
    assert "cmyk.jpg" not in message and "deep.png" not in message  # supported modes are not problems


def test_worker_processes_give_the_same_result_as_one_process(dataset_copy):
    add_bad_files(dataset_copy)
    add_odd_modes(dataset_copy)
    serial = validate(dataset_copy, max_image_pixels=100_000, workers=1)
    parallel = validate(dataset_copy, max_image_pixels=100_000, workers=2)
    assert parallel.report == serial.report
    pd.testing.assert_frame_equal(parallel.manifest, serial.manifest)


def test_a_class_with_no_usable_file_stops_validation(dataset_copy):
    for path in (dataset_copy / "Testing/pituitary_tumor").iterdir():
        path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match=r"no usable image of class pituitary_tumor in the test split"):
        validate(dataset_copy)


def test_file_names_with_spaces_parentheses_commas_and_unicode(dataset_copy, tmp_path):
    names = ["scan (1).jpg", "my scan.JPG", "снимок 脑 é.jpg", "a,b;c.jpeg", "sub dir/nested.jpg"]
    for i, name in enumerate(names):
        path = dataset_copy / "Training/meningioma_tumor" / name
        path.parent.mkdir(exist_ok=True)
        fresh_slice(10 + i, "meningioma").save(path, "JPEG")
    result = validate(dataset_copy)
    assert result.report["n_excluded"] == 0 and result.report["n_train"] == N_TRAIN + len(names)
    for name in names:
        assert row(result.manifest, f"Training/meningioma_tumor/{name}")["label"] == "meningioma_tumor"
    # The manifest survives its CSV round trip with these names.
    write_manifest(result.manifest, tmp_path / "splits.csv")
    back = read_manifest(tmp_path / "splits.csv", CLASSES)
    assert back["path"].tolist() == result.manifest["path"].tolist()


def test_validation_never_modifies_the_dataset(dataset_copy):
    add_bad_files(dataset_copy)
    add_odd_modes(dataset_copy)
    add_junk(dataset_copy)
    shutil.copy(dataset_copy / "Training/no_tumor/tr_0001.jpg", dataset_copy / "Testing/no_tumor/leak.jpg")
    before = snapshot(dataset_copy)
    validate(dataset_copy, max_image_pixels=100_000, workers=2)
    with pytest.raises(DataError):
        validate(dataset_copy, max_image_pixels=100_000, on_bad_file="fail")
    assert snapshot(dataset_copy) == before


# --- duplicates and leaks ----------------------------------------------------------------------------------------


def test_exact_copy_within_training_is_counted_and_grouped(dataset_copy):
    shutil.copy(dataset_copy / "Training/glioma_tumor/tr_0002.jpg", dataset_copy / "Training/glioma_tumor/copy.jpg")
    result = validate(dataset_copy)
    assert result.report["exact_duplicates_in_train"] == 1
    assert result.report["near_duplicate_groups_in_train"] == 1
    assert result.report["label_conflicts"] == 0
    a = row(result.manifest, "Training/glioma_tumor/tr_0002.jpg")
    b = row(result.manifest, "Training/glioma_tumor/copy.jpg")
    assert a["group"] == b["group"] and a["split"] == b["split"]


def test_exact_copy_in_testing_is_a_leak(dataset_copy):
    shutil.copy(
        dataset_copy / "Training/meningioma_tumor/tr_0003.jpg", dataset_copy / "Testing/meningioma_tumor/leak.jpg"
    )
    result = validate(dataset_copy)
    assert result.report["test_exact_in_train"] == 1
    assert result.report["test_near_in_train"] == 0
    assert result.report["test_leak_free"] == N_TEST  # the 12 originals; the copy is the 13th test image
    leak = row(result.manifest, "Testing/meningioma_tumor/leak.jpg")
    assert leak["exact_in_train"] and not leak["near_in_train"]
    assert leak["group"] == row(result.manifest, "Training/meningioma_tumor/tr_0003.jpg")["group"]
    others = result.manifest[result.manifest["path"] != "Testing/meningioma_tumor/leak.jpg"]
    assert not others["exact_in_train"].any()


def test_reencoded_and_resized_copy_in_testing_is_a_near_leak(dataset_copy):
    # A full-size (256 px) scan in Training, and in Testing the same scan shrunk to 95% and saved at quality 60.
    original = fresh_slice(20, "glioma", size=256)
    original.save(dataset_copy / "Training/glioma_tumor/big.jpg", quality=92)
    copy = Image.open(io.BytesIO(jpeg_bytes(original))).resize((243, 243), Image.BICUBIC)
    (dataset_copy / "Testing/glioma_tumor/big_copy.jpg").write_bytes(jpeg_bytes(copy, quality=60))
    # An unrelated new scan of the same class is not a leak.
    fresh_slice(21, "glioma", size=256).save(dataset_copy / "Testing/glioma_tumor/big_other.jpg")
    result = validate(dataset_copy)
    assert result.report["test_near_in_train"] == 1
    assert result.report["test_exact_in_train"] == 0
    assert result.report["test_leak_free"] == N_TEST + 1
    near = row(result.manifest, "Testing/glioma_tumor/big_copy.jpg")
    assert near["near_in_train"] and not near["exact_in_train"]
    assert near["group"] == row(result.manifest, "Training/glioma_tumor/big.jpg")["group"]
    assert not row(result.manifest, "Testing/glioma_tumor/big_other.jpg")["near_in_train"]


def test_same_image_under_two_labels_is_a_label_conflict(dataset_copy):
    shutil.copy(
        dataset_copy / "Training/glioma_tumor/tr_0001.jpg",
        dataset_copy / "Training/meningioma_tumor/looks_like_glioma.jpg",
    )
    result = validate(dataset_copy)
    assert result.report["label_conflicts"] == 1
    (conflict,) = result.report["label_conflict_groups"]
    assert conflict["labels"] == ["glioma_tumor", "meningioma_tumor"]
    assert sorted(conflict["paths"]) == [
        "Training/glioma_tumor/tr_0001.jpg",
        "Training/meningioma_tumor/looks_like_glioma.jpg",
    ]
    assert conflict["size"] == 2
    json.dumps(result.report, allow_nan=False)


def test_val_never_splits_a_group_of_copies(dataset_copy):
    source = dataset_copy / "Training/no_tumor/tr_0002.jpg"
    shutil.copy(source, dataset_copy / "Training/no_tumor/copy_a.jpg")
    shutil.copy(source, dataset_copy / "Training/no_tumor/copy_b.jpg")
    (dataset_copy / "Training/no_tumor/copy_c.jpg").write_bytes(jpeg_bytes(Image.open(source), quality=70))
    copies = {
        "Training/no_tumor/tr_0002.jpg",
        "Training/no_tumor/copy_a.jpg",
        "Training/no_tumor/copy_b.jpg",
        "Training/no_tumor/copy_c.jpg",
    }
    sides = set()
    for seed in range(8):
        manifest = validate(dataset_copy, val_fraction=0.3, split_seed=seed).manifest
        group_rows = manifest[manifest["path"].isin(copies)]
        assert group_rows["group"].nunique() == 1
        assert group_rows["split"].nunique() == 1, f"seed {seed}: copies on both sides"
        sides.add(group_rows["split"].iloc[0])
        training = manifest[manifest["split"] != "test"]
        assert (training.groupby("group")["split"].nunique() == 1).all()
        # Every class keeps images on both sides.
        for label, split_counts in training.groupby("label")["split"]:
            assert set(split_counts) == {"train", "val"}, (seed, label)
    assert sides == {"train", "val"}  # the group really moves, and moves whole


# --- grouped_stratified_val --------------------------------------------------------------------------------------


def test_stratified_val_takes_the_fraction_of_every_class():
    labels = [c for c in "abcd" for _ in range(20)]
    groups = np.arange(len(labels))
    is_val = grouped_stratified_val(labels, groups, fraction=0.25, seed=0)
    for c in "abcd":
        assert sum(v for v, label in zip(is_val, labels) if label == c) == 5
    again = grouped_stratified_val(labels, groups, fraction=0.25, seed=0)
    other = grouped_stratified_val(labels, groups, fraction=0.25, seed=1)
    assert np.array_equal(is_val, again) and not np.array_equal(is_val, other)


def test_stratified_val_moves_whole_groups_and_never_a_whole_class():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 4, size=60)
    groups = np.repeat(np.arange(60), sizes)
    labels = ["ab"[g % 2] for g in groups]
    for seed in range(10):
        is_val = grouped_stratified_val(labels, groups, fraction=0.2, seed=seed)
        for g in range(60):
            assert len(set(is_val[groups == g])) == 1
        for c in "ab":
            share = np.mean([v for v, label in zip(is_val, labels) if label == c])
            assert 0.1 <= share <= 0.3, (seed, c, share)
    # One class that is a single group cannot lend any of it to val without losing all of its training data.
    assert not grouped_stratified_val(["a"] * 5, np.zeros(5, dtype=int), fraction=0.5, seed=0).any()


# --- folders -----------------------------------------------------------------------------------------------------


def test_missing_dataset_folder_says_how_to_get_one(tmp_path):
    with pytest.raises(DataError, match=r"does not exist.*sample-data"):
        validate(tmp_path / "nowhere")


def test_missing_testing_folder(dataset_copy):
    shutil.rmtree(dataset_copy / "Testing")
    with pytest.raises(DataError, match=r"Testing is missing \(found: \['Training'\]\)"):
        validate(dataset_copy)


def test_missing_class_folder(dataset_copy):
    shutil.rmtree(dataset_copy / "Testing/pituitary_tumor")
    with pytest.raises(DataError, match=r"class folder \S*Testing/pituitary_tumor is missing.*data\.aliases"):
        validate(dataset_copy)


def test_class_folder_without_images(dataset_copy):
    folder = dataset_copy / "Training/no_tumor"
    for path in folder.iterdir():
        path.unlink()
    (folder / ".DS_Store").write_bytes(b"junk")
    (folder / "README.txt").write_text("scans go here\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"Training/no_tumor holds no image files.*no_tumor"):
        validate(dataset_copy)


def test_unexpected_class_folder_suggests_an_alias(dataset_copy):
    extra = dataset_copy / "Training/notumor2"
    extra.mkdir()
    fresh_slice(30).save(extra / "x.jpg")
    with pytest.raises(DataError) as info:
        validate(dataset_copy)
    message = str(info.value)
    assert "unexpected class folder" in message and "notumor2" in message
    assert "aliases:" in message and "notumor2: no_tumor" in message


def test_unexpected_folder_unlike_any_class_is_named(dataset_copy):
    (dataset_copy / "Testing/zzz").mkdir()
    with pytest.raises(DataError, match=r"unexpected class folder \S*Testing/zzz"):
        validate(dataset_copy)


def test_alias_maps_a_folder_to_its_class(dataset_copy):
    for split in ("Training", "Testing"):
        (dataset_copy / split / "no_tumor").rename(dataset_copy / split / "notumor")
    with pytest.raises(DataError, match="notumor: no_tumor"):  # without the alias: the error suggests it
        validate(dataset_copy, aliases={})
    result = validate(dataset_copy, aliases={"notumor": "no_tumor"})
    report, manifest = result.report, result.manifest
    assert report["n_train"] == N_TRAIN and report["n_test"] == N_TEST
    assert report["per_class"]["test"]["no_tumor"] == 3
    aliased = manifest[manifest["path"].str.contains("/notumor/")]
    assert len(aliased) == 9 and set(aliased["label"]) == {"no_tumor"}
    assert "notumor" not in set(manifest["label"])


def test_alias_and_canonical_folder_are_merged(dataset_copy):
    (dataset_copy / "Training/notumor").mkdir()
    fresh_slice(31).save(dataset_copy / "Training/notumor/extra.jpg")
    report = validate(dataset_copy, aliases={"notumor": "no_tumor"}).report
    assert report["per_class"]["train"]["no_tumor"] + report["per_class"]["val"]["no_tumor"] == 7


# --- manifest file -----------------------------------------------------------------------------------------------


def test_manifest_round_trip(dataset_copy, tmp_path):
    shutil.copy(dataset_copy / "Training/glioma_tumor/tr_0000.jpg", dataset_copy / "Testing/glioma_tumor/leak.jpg")
    manifest = validate(dataset_copy).manifest
    path = tmp_path / "manifests/splits.csv"
    write_manifest(manifest, path)
    back = read_manifest(path, CLASSES)
    assert list(back.columns) == MANIFEST_COLUMNS
    pd.testing.assert_frame_equal(back, manifest[MANIFEST_COLUMNS].reset_index(drop=True), check_dtype=False)
    assert back["exact_in_train"].dtype == bool and back["exact_in_train"].sum() == 1
    assert [p.name for p in path.parent.iterdir()] == ["splits.csv"]  # no temporary file left behind


def test_read_manifest_errors(tmp_path):
    with pytest.raises(DataError, match="Run the validate stage"):
        read_manifest(tmp_path / "missing.csv")
    partial = tmp_path / "old.csv"
    partial.write_text("path,split,label\nTraining/a/x.jpg,train,a\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"lacks the columns \['sha256'"):
        read_manifest(partial)
    frame = pd.DataFrame(
        [
            {
                "path": "Training/a/x.jpg",
                "split": "train",
                "label": "glioma",
                "sha256": "0" * 64,
                "group": 0,
                "exact_in_train": False,
                "near_in_train": False,
                "width": 1,
                "height": 1,
                "mode": "L",
            }
        ]
    )
    write_manifest(frame, tmp_path / "splits.csv")
    with pytest.raises(DataError, match=r"labels \['glioma'\] that are not in data.classes"):
        read_manifest(tmp_path / "splits.csv", CLASSES)


# --- imaging -----------------------------------------------------------------------------------------------------


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(ImageProblem, match="decompression bomb"):
        open_checked(png_header_only(30_000, 30_000), limits=ImageLimits(max_pixels=10**12))
    with pytest.raises(ImageProblem, match="over the limit data.max_image_pixels=1,000"):
        open_checked(png_header_only(100, 100), limits=ImageLimits(max_pixels=1000))
    # Within limits, the same header with no pixel data is a truncated image.
    with pytest.raises(ImageProblem, match="truncated"):
        open_checked(png_header_only(100, 100), limits=ImageLimits(max_pixels=10**6))


def test_sixteen_bit_scan_is_stretched_to_the_full_8_bit_range():
    ramp = np.tile(np.linspace(1000, 3000, 64).astype(np.uint16), (32, 1))
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, "PNG")
    gray = decode_grayscale(buffer.getvalue(), limits=ImageLimits(max_pixels=10**6))
    pixels = np.asarray(gray)
    assert gray.mode == "L" and pixels.min() == 0 and pixels.max() == 255
    assert (np.diff(pixels[0].astype(int)) >= 0).all()  # order of intensities kept


def test_transparent_pixels_become_black():
    rgba = Image.new("RGBA", (4, 4), (255, 255, 255, 255))
    rgba.putpixel((0, 0), (255, 255, 255, 0))
    pixels = np.asarray(to_grayscale(rgba))
    assert pixels[0, 0] == 0 and pixels[1, 1] == 255
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 255, 255, 255])
    palette.putpixel((0, 0), 1)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 1
    assert np.asarray(to_grayscale(palette)).tolist() == [[0, 0]]


def test_cmyk_and_rgb_scans_become_grayscale():
    gray = Image.new("L", (8, 8), 128)
    for mode in ("RGB", "CMYK"):
        out = to_grayscale(gray.convert(mode))
        assert out.mode == "L" and abs(int(np.asarray(out).mean()) - 128) <= 2, mode


def test_file_kinds_read_as_scans():
    assert is_candidate(Path("a/Scan 1.JPG")) and is_candidate(Path("b.png")) and is_candidate(Path("c.tiff"))
    for name in (".DS_Store", "Thumbs.db", "._x.jpg", ".hidden.png", "notes.txt", "scan.dcm.txt"):
        assert not is_candidate(Path(name)), name
    assert is_candidate(Path("scan.dcm")) and is_candidate(Path("brain.nii.gz"))  # DICOM and NIfTI: test_medical.py


# --- command line ------------------------------------------------------------------------------------------------


def test_cli_on_a_broken_dataset_exits_2_with_a_one_line_error(dataset_copy, tmp_path):
    shutil.rmtree(dataset_copy / "Testing")
    raw = tiny_params_dict(dataset_copy)
    raw["paths"].update(manifest=str(tmp_path / "out/splits.csv"), validation_report=str(tmp_path / "out/v.json"))
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw), encoding="utf-8")
    result = run(
        [str(REPO / ".venv/bin/braintumor"), "validate", "--params", str(params_file)], cwd=tmp_path, check=False
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Testing is missing" in errors[0]
    assert errors[0] == result.stderr.strip().splitlines()[-1]  # the last thing printed, and all on one line
    assert not (tmp_path / "out").exists()  # no manifest or report from a failed validation


def test_data_error_is_a_user_error():
    assert issubclass(DataError, BrainTumorError)


# --- a split too small to train on ---------------------------------------------------------------------------------


def test_too_few_scans_for_a_val_split_stop_validation_saying_how_many_are_needed(tmp_path):
    write_sample_dataset(tmp_path / "data", per_class=3, test_per_class=2, size=64, seed=1)
    with pytest.raises(DataError) as caught:
        validate(tmp_path / "data")
    assert str(caught.value) == (
        "no val scan of class glioma_tumor: it has 3 usable Training scan(s), and with data.val_fraction=0.15 a class "
        "needs at least 4 distinct ones to have both train and val scans. Add Training scans of glioma_tumor, or "
        "raise data.val_fraction."
    )
    assert validate(tmp_path / "data", val_fraction=0.2).report["n_val"] == 4  # round(3 * 0.2) = 1 per class


def test_a_class_whose_scans_are_all_copies_of_one_has_no_val_scan(dataset_copy):
    folder = dataset_copy / "Training" / "pituitary_tumor"
    first = sorted(folder.iterdir())[0].read_bytes()
    for path in folder.iterdir():
        path.write_bytes(first)
    with pytest.raises(
        DataError,
        match=r"no val scan of class pituitary_tumor: it has 6 usable Training scan\(s\) "
        r"\(1 distinct: copies of one scan stay on one side of the split\)",
    ):
        validate(dataset_copy)


# --- image sizes: where the scans come from ----------------------------------------------------------------------


def test_size_seen_in_training_matches_sizes_within_a_class_only():
    from braintumor.data.splits import size_seen_in_training

    training = pd.DataFrame({"label": ["a", "a", "b"], "width": [512, 512, 236], "height": [512, 512, 236]})
    rows = pd.DataFrame({"label": ["a", "a", "b", "b"], "width": [512, 236, 236, 512], "height": [512, 236, 236, 512]})
    assert size_seen_in_training(rows, training).tolist() == [True, False, True, False]


def test_testing_scans_at_sizes_their_class_never_has_in_training_are_reported_and_warned(dataset_copy, caplog):
    # Testing's gliomas from "another source" (80 x 80); a Training no_tumor scan at 80 x 80 does not make them seen
    for path in sorted((dataset_copy / "Testing/glioma_tumor").iterdir()):
        Image.open(path).resize((80, 80)).save(path, quality=92)
    fresh_slice(7).resize((80, 80)).save(dataset_copy / "Training/no_tumor/big.jpg", quality=92)
    Image.open(dataset_copy / "Testing/meningioma_tumor/te_0000.jpg").resize((80, 60)).save(
        dataset_copy / "Testing/meningioma_tumor/te_0000.jpg", quality=92
    )
    with caplog.at_level("WARNING"):
        report = validate(dataset_copy).report
    shift = report["image_size_shift"]
    assert shift["glioma_tumor"] == {
        "training_sizes": 1,
        "training_top_size": "64x64",
        "training_top_share": 1.0,
        "test_n": 3,
        "test_size_seen": 0.0,
    }
    assert shift["meningioma_tumor"]["test_size_seen"] == pytest.approx(2 / 3)  # above the warning's 1/2
    assert shift["no_tumor"]["training_sizes"] == 2 and shift["no_tumor"]["test_size_seen"] == 1.0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert report["image_size_warnings"] == warnings  # the report shows them too
    assert len(warnings) == 1 and warnings[0].startswith(
        "Testing's glioma_tumor scans: 0% of 3 have an image size found among Training's glioma_tumor scans "
        "(all at 64x64)"
    )
    assert "add Training scans of glioma_tumor from those sources" in warnings[0]
    json.dumps(report, allow_nan=False)


def test_a_clean_sample_has_no_size_shift(dataset_copy):
    shift = validate(dataset_copy).report["image_size_shift"]
    assert all(s["test_size_seen"] == 1.0 and s["training_top_size"] == "64x64" for s in shift.values())
