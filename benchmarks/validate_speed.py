"""How long the validate stage takes on a real dataset, its peak memory and what it finds.

    python benchmarks/validate_speed.py [DATASET]     (default: ../shared/data/brain-tumor-mri)

Last line: seconds=<s> peak_rss_gb=<g> test_exact_in_train=<n> test_near_in_train=<n>
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from braintumor.config import DataConfig
from braintumor.data.splits import write_manifest
from braintumor.data.validate import validate_dataset
from braintumor.fileio import write_json

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brain-tumor-mri"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", nargs="?", type=Path, default=DEFAULT)
    args = parser.parse_args()
    start = time.perf_counter()
    result = validate_dataset(args.dataset, DataConfig(aliases={"notumor": "no_tumor"}), progress=False)
    with tempfile.TemporaryDirectory() as tmp:  # writing the outputs is part of the stage
        write_manifest(result.manifest, Path(tmp) / "splits.csv")
        write_json(Path(tmp) / "validation.json", result.report)
    seconds = time.perf_counter() - start
    # ru_maxrss is in KiB on Linux; the workers are children, so take the larger of the two peaks.
    peak_kib = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    )
    r = result.report
    print(f"dataset {args.dataset}: {r['n_train']} Training, {r['n_test']} Testing, {r['n_excluded']} excluded")
    print(
        f"exact duplicates inside Training: {r['exact_duplicates_in_train']}; near-duplicate groups inside "
        f"Training: {r['near_duplicate_groups_in_train']}; label conflicts: {r['label_conflicts']}"
    )
    print(
        f"Testing images with a copy in Training: {r['test_exact_in_train']} exact, {r['test_near_in_train']} "
        f"near; leak-free Testing images: {r['test_leak_free']} of {r['n_test']}"
    )
    print(f"image modes: {r['image_modes']}; sizes min/median/max: {r['image_sizes']}")
    print(
        f"seconds={seconds:.2f} peak_rss_gb={peak_kib / 1024**2:.2f} "
        f"test_exact_in_train={r['test_exact_in_train']} test_near_in_train={r['test_near_in_train']}"
    )


if __name__ == "__main__":
    main()
