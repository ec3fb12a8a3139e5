"""The built-in sample dataset: reproducible, in the real dataset's layout, and only the lesion tells classes apart."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import recall_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from braintumor.config import DEFAULT_CLASSES, DataConfig
from braintumor.data.sample import has_dataset, synthetic_slice, write_sample_dataset
from braintumor.data.validate import validate_dataset


def file_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_writes_byte_identical_files(tmp_path):
    write_sample_dataset(tmp_path / "a", per_class=3, test_per_class=2, size=64, seed=5)
    write_sample_dataset(tmp_path / "b", per_class=3, test_per_class=2, size=64, seed=5)
    a, b = file_hashes(tmp_path / "a"), file_hashes(tmp_path / "b")
    assert len(a) == 4 * (3 + 2)
    assert a == b


def test_different_seed_writes_different_images(tmp_path):
    write_sample_dataset(tmp_path / "a", per_class=3, test_per_class=2, size=64, seed=5)
    write_sample_dataset(tmp_path / "b", per_class=3, test_per_class=2, size=64, seed=6)
    a, b = file_hashes(tmp_path / "a"), file_hashes(tmp_path / "b")
    assert a.keys() == b.keys()  # same names ...
    assert all(a[name] != b[name] for name in a)  # ... and every image new


def test_every_image_in_a_dataset_is_different(tmp_path):
    write_sample_dataset(tmp_path, per_class=4, test_per_class=3, size=64, seed=0)
    hashes = list(file_hashes(tmp_path).values())
    assert len(hashes) == 28 and len(set(hashes)) == len(hashes)


def test_layout_and_counts(tmp_path):
    counts = write_sample_dataset(tmp_path, per_class=5, test_per_class=2, size=48, seed=0)
    assert counts == {"Training": 20, "Testing": 8}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Testing", "Training"]
    for split, n in (("Training", 5), ("Testing", 2)):
        assert sorted(p.name for p in (tmp_path / split).iterdir()) == sorted(DEFAULT_CLASSES)
        for name in DEFAULT_CLASSES:
            files = sorted((tmp_path / split / name).iterdir())
            assert len(files) == n and all(f.suffix == ".jpg" and f.is_file() for f in files)


def test_default_test_count_is_a_quarter_with_at_least_two(tmp_path):
    assert write_sample_dataset(tmp_path / "a", per_class=12, size=32)["Testing"] == 4 * 3
    assert write_sample_dataset(tmp_path / "b", per_class=3, size=32)["Testing"] == 4 * 2


def test_custom_classes_get_their_own_folders(tmp_path):
    counts = write_sample_dataset(tmp_path, per_class=2, test_per_class=2, size=32, classes=["glioma", "healthy"])
    assert counts == {"Training": 4, "Testing": 4}
    assert sorted(p.name for p in (tmp_path / "Training").iterdir()) == ["glioma", "healthy"]


def test_every_class_has_the_same_size_mode_and_encoding(tmp_path):
    # Nothing but the content may differ between classes, or a model learns the trivia instead of the lesion.
    write_sample_dataset(tmp_path, per_class=3, test_per_class=2, size=80, seed=2)
    seen = set()
    for path in sorted(tmp_path.rglob("*.jpg")):
        with Image.open(path) as image:
            seen.add(
                (
                    image.format,
                    image.mode,
                    image.size,
                    str(sorted(image.info)),
                    str(image.quantization),
                    str(image.layer),
                )
            )
    assert len(seen) == 1
    fmt, mode, size, *_ = seen.pop()
    assert (fmt, mode, size) == ("JPEG", "L", (80, 80))


@pytest.mark.parametrize("lesion", ["glioma", "meningioma", "pituitary", "none"])
def test_synthetic_slice_is_a_grayscale_square_and_a_function_of_the_rng(lesion):
    first = synthetic_slice(np.random.default_rng(7), lesion, size=96)
    again = synthetic_slice(np.random.default_rng(7), lesion, size=96)
    other = synthetic_slice(np.random.default_rng(8), lesion, size=96)
    assert first.mode == "L" and first.size == (96, 96)
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()
    pixels = np.asarray(first)
    assert pixels.min() < 40 and pixels.max() > 150  # dark background, bright skull: not a blank image


def test_has_dataset(tmp_path):
    assert not has_dataset(tmp_path / "missing")
    (tmp_path / "Training").mkdir()
    assert not has_dataset(tmp_path)
    write_sample_dataset(tmp_path, per_class=1, test_per_class=1, size=32)
    assert has_dataset(tmp_path)


def _features(path: Path) -> np.ndarray:
    """16x16 thumbnail, divided by its 99th percentile to undo the per-scan gain."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L").resize((16, 16), Image.BILINEAR), dtype=np.float32)
    return (pixels / max(float(np.percentile(pixels, 99)), 1.0)).ravel()


def _load(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = [], []
    for index, name in enumerate(DEFAULT_CLASSES):
        for path in sorted((root / split / name).glob("*.jpg")):
            x.append(_features(path))
            y.append(index)
    return np.stack(x), np.array(y)


def test_classes_differ_in_image_content(tmp_path):
    # A linear model on 16x16 thumbnails learns the classes from a generated Training split well enough to
    # label the generated Testing split far above chance (0.25), every class included. (Measured over seeds
    # 0-9: accuracy 0.81-0.89, worst class recall >= 0.64.)
    write_sample_dataset(tmp_path, per_class=100, test_per_class=25, size=64, seed=0)
    x_train, y_train = _load(tmp_path, "Training")
    x_test, y_test = _load(tmp_path, "Testing")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=3000))
    predicted = model.fit(x_train, y_train).predict(x_test)
    accuracy = float((predicted == y_test).mean())
    assert accuracy >= 0.6, accuracy
    assert recall_score(y_test, predicted, average=None).min() >= 0.4

    # Control: the same model trained on shuffled labels is at chance, so the bar above measures the lesions.
    shuffled = np.random.default_rng(0).permutation(y_train)
    control = model.fit(x_train, shuffled).predict(x_test)
    assert float((control == y_test).mean()) < 0.45


def test_full_size_sample_has_no_duplicates_or_leaks(tmp_path):
    # `braintumor sample-data` writes 256 px scans; none of them may look like a copy of another to validation,
    # or the sample would report leaks and distort the grouped val split.
    write_sample_dataset(tmp_path, per_class=25, test_per_class=10, seed=0)
    report = validate_dataset(tmp_path, DataConfig(), workers=1, progress=False).report
    assert report["n_train"] == 100 and report["n_test"] == 40 and report["n_excluded"] == 0
    assert report["image_sizes"] == {"min": "256x256", "median": "256x256", "max": "256x256"}
    assert report["exact_duplicates_in_train"] == 0
    assert report["near_duplicate_groups_in_train"] == 0
    assert report["test_exact_in_train"] == 0 and report["test_near_in_train"] == 0
    assert report["label_conflicts"] == 0
