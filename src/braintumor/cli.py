"""The `braintumor` command, and the wrapper every stage script runs under.

User mistakes (`BrainTumorError`) are printed as one clear message and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from braintumor.config import Params, load_params
from braintumor.errors import BrainTumorError


def run_stage(stage: Callable[[Params], Any], argv: list[str] | None = None) -> None:
    """Entry point of `stages/<name>.py`: `python stages/<name>.py [--params params.yaml]`."""
    parser = argparse.ArgumentParser(description=stage.__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    _guarded(lambda: stage(load_params(args.params)))


def _guarded(action: Callable[[], Any]) -> Any:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return action()
    except BrainTumorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; outputs written so far are complete (every write is atomic)", file=sys.stderr)
        sys.exit(130)


def _sample_data(args: argparse.Namespace) -> None:
    from braintumor.data.sample import write_sample_dataset

    counts = write_sample_dataset(args.dir, per_class=args.per_class, test_per_class=args.test_per_class,
                                  seed=args.seed, size=args.size)
    print(f"sample-data: wrote {counts['Training']} Training and {counts['Testing']} Testing images to {args.dir}")


def _validate(args: argparse.Namespace) -> None:
    params = load_params(args.params)  # bad params fail before the heavier imports below
    from braintumor.pipeline import validate

    validate(params)


def _predict(args: argparse.Namespace) -> None:
    from braintumor.predict import predict_paths

    predict_paths(args.paths, args.model, output=args.output, gradcam_dir=args.gradcam)


def _import_data(args: argparse.Namespace) -> None:
    from braintumor.data.importer import import_dataset

    params = load_params(args.params)
    dest = args.dest or params.paths.data
    counts = import_dataset(args.source, dest, params.data.classes, params.data.aliases)
    print(f"import-data: copied {counts.get('Training', 0)} Training and {counts.get('Testing', 0)} Testing images "
          f"into {dest}/. Version it: dvc add {dest}/Training {dest}/Testing && git add {dest}/*.dvc")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="braintumor", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample-data", help="write the built-in synthetic sample dataset")
    p.add_argument("dir", type=Path, help="dataset folder to write (Training/ and Testing/ go inside)")
    p.add_argument("--per-class", type=int, default=100, help="Training images per class (default 100)")
    p.add_argument("--test-per-class", type=int, default=None, help="Testing images per class (default per-class/4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.set_defaults(func=_sample_data)

    p = sub.add_parser("validate", help="run the validate stage (checks, duplicates, leakage, split manifest)")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=_validate)

    p = sub.add_parser("predict", help="label scans on disk (files or folders, recursive)")
    p.add_argument("paths", nargs="+", help="image files or folders")
    p.add_argument("--model", default="models/model.pt",
                   help="a model file, or an MLflow model URI such as models:/brain-tumor-classifier@champion")
    p.add_argument("--output", help="write every class probability to a .csv or .json file")
    p.add_argument("--gradcam", metavar="DIR", help="also write a Grad-CAM overlay PNG per scan into DIR")
    p.set_defaults(func=_predict)

    p = sub.add_parser("import-data", help="copy a dataset folder or the Kaggle zip into data/ (aliases applied)")
    p.add_argument("source", type=Path, help="a folder holding Training/ and Testing/, or a .zip of one")
    p.add_argument("--dest", help="destination (default: paths.data from params.yaml)")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=_import_data)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    _guarded(lambda: args.func(args))


if __name__ == "__main__":
    main()
