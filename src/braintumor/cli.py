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
        # True of every file this project writes: outputs go through fileio.atomic_path, datasets (sample-data,
        # import-data) through fileio.staged_folders. The MLflow run of an interrupted training is marked FAILED.
        print(
            "interrupted: no output was left half-written (each file is complete or absent; sample-data and "
            "import-data leave no dataset); rerun to finish (training resumes from its last finished epoch)",
            file=sys.stderr,
        )
        sys.exit(130)


def _sample_data(args: argparse.Namespace) -> None:
    from braintumor.data.sample import write_sample_dataset

    counts = write_sample_dataset(
        args.dir, per_class=args.per_class, test_per_class=args.test_per_class, seed=args.seed, size=args.size
    )
    print(f"sample-data: wrote {counts['Training']} Training and {counts['Testing']} Testing images to {args.dir}")


def _validate(args: argparse.Namespace) -> None:
    params = load_params(args.params)  # bad params fail before the heavier imports below
    from braintumor.pipeline import validate

    validate(params)


def _predict(args: argparse.Namespace) -> None:
    from braintumor.predict import predict_paths

    predict_paths(
        args.paths,
        args.model,
        output=args.output,
        gradcam_dir=args.gradcam,
        device=args.device,
        precision=args.precision,
        middle=args.middle,
    )


def _app(args: argparse.Namespace) -> None:
    from braintumor.app.server import run_app

    run_app(args.model, host=args.host, port=args.port, device=args.device)


def _import_data(args: argparse.Namespace) -> None:
    from braintumor.data.importer import import_dataset

    params = load_params(args.params)
    dest = args.dest or params.paths.data
    result = import_dataset(
        args.source, dest, params.data.classes, params.data.aliases, max_file_bytes=params.data.max_file_bytes
    )
    if result.skipped_links:
        listed = ", ".join(result.skipped_links[:10]) + (" ..." if len(result.skipped_links) > 10 else "")
        print(f"import-data: skipped {len(result.skipped_links)} symbolic link(s), never followed: {listed}")
    counts = result.counts
    print(
        f"import-data: copied {counts.get('Training', 0)} Training and {counts.get('Testing', 0)} Testing images "
        f"into {dest}/. Version it: dvc add {dest}/Training {dest}/Testing && git add {dest}/*.dvc\n"
        f"Train on it with the best recipe for this machine's CPU, from scratch (offline):  {_cpu_recipe_line()}\n"
        "  with ImageNet weights on a GPU: braintumor recipe imagenet-finetune   (all recipes: braintumor recipe)"
    )


def _cpu_recipe_line() -> str:
    """The from-scratch recipe for this CPU: the bf16 one needs bf16 instructions to fit its 30 minutes."""
    from braintumor.runtime import cpu_has_fast_bf16

    if cpu_has_fast_bf16():
        return "braintumor recipe cpu-scratch-bf16   (this CPU has AVX512-BF16 or AMX)"
    return "braintumor recipe cpu-scratch   (this CPU has no bf16 instructions; cpu-scratch-bf16 would take 50 min)"


def _recipe(args: argparse.Namespace) -> None:
    import shlex
    import subprocess
    import time

    import yaml

    from braintumor.recipes import list_recipes, load_recipe

    if not args.name:
        for recipe in list_recipes():
            print(f"{recipe.name:<20} {recipe.description}")
        print("\nRun one: braintumor recipe NAME   (show its command first: braintumor recipe NAME --dry-run)")
        return
    recipe = load_recipe(args.name)
    params_path = Path(args.params)
    if not params_path.is_file():
        raise BrainTumorError(f"{params_path} not found: run from the repository root.")
    with open(params_path, encoding="utf-8") as fh:
        recipe.check(yaml.safe_load(fh) or {})  # a bad key or value stops here, before DVC starts
    command = [
        "dvc",
        "exp",
        "run",
        "-n",
        f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        *recipe.set_args(),
        *args.dvc_args,
    ]
    print(f"recipe {recipe.name}: {recipe.description}")
    print(shlex.join(command), flush=True)
    if args.dry_run:
        return
    dvc = Path(sys.executable).with_name("dvc")  # the venv's, also when the venv is not activated
    sys.exit(subprocess.call([str(dvc) if dvc.is_file() else "dvc", *command[1:]]))


def _runs_url(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    from braintumor.tracking.runs import runs_table_url

    print(runs_table_url(params.tracking.experiment))


def _monitor(args: argparse.Namespace) -> None:
    from braintumor.serving.monitor import monitor

    result = monitor(args.log, reference=args.reference, since=args.since, output_dir=args.output_dir)
    for alert in result["alerts"]:
        print(f"ALERT {alert['version']}: {alert['test']}: {alert['figures']}. Look at {alert['look_at']}.")
    tested = sum(bool(v["tests"]) for v in result["versions"])
    print(
        f"monitor: {result['answers']} answers, {len(result['versions'])} model versions ({tested} tested), "
        f"{len(result['alerts'])} alerts; wrote {args.output_dir}/monitor.html and monitor.json"
    )
    if args.fail_on_drift and result["alerts"]:
        sys.exit(1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="braintumor", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    command = sub.add_parser("sample-data", help="write the built-in synthetic sample dataset")
    command.add_argument("dir", type=Path, help="dataset folder to write (Training/ and Testing/ go inside)")
    command.add_argument("--per-class", type=int, default=100, help="Training images per class (default 100)")
    command.add_argument(
        "--test-per-class", type=int, default=None, help="Testing images per class (default per-class/4)"
    )
    command.add_argument("--seed", type=int, default=0)
    command.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    command.set_defaults(func=_sample_data)

    command = sub.add_parser("validate", help="run the validate stage (checks, duplicates, leakage, split manifest)")
    command.add_argument("--params", default="params.yaml")
    command.set_defaults(func=_validate)

    command = sub.add_parser("predict", help="label scans on disk (files or folders, recursive)")
    command.add_argument("paths", nargs="+", help="image, DICOM or NIfTI files, or folders")
    command.add_argument(
        "--model",
        default="models/model.pt",
        help="a model file, or an MLflow model URI such as models:/brain-tumor-classifier@champion",
    )
    command.add_argument("--output", help="write every class probability to a .csv or .json file")
    command.add_argument("--gradcam", metavar="DIR", help="also write a Grad-CAM overlay PNG per scan into DIR")
    command.add_argument(
        "--middle",
        type=int,
        metavar="N",
        help="predict only the N middle slices of each NIfTI volume (or frames of a multi-frame DICOM)",
    )
    command.add_argument(
        "--device",
        default="auto",
        help="auto (default: MLFLOW_DEFAULT_PREDICTION_DEVICE if set, else CUDA when present, "
        "else CPU), cpu, cuda or cuda:N",
    )
    command.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="fp32 (default), or bf16 / fp16 autocast on a CUDA GPU (see README: Serving on a GPU)",
    )
    command.set_defaults(func=_predict)

    command = sub.add_parser(
        "app",
        help="a web page for the model: drop scans, see the label, probabilities and Grad-CAM (http://127.0.0.1:8000)",
    )
    command.add_argument(
        "--model",
        default="models:/brain-tumor-classifier@champion",
        help="an MLflow model URI (default: models:/brain-tumor-classifier@champion in the tracking "
        "store, MLFLOW_TRACKING_URI or ./mlflow.db) or a model file",
    )
    command.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; the page has no authentication)",
    )
    command.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    command.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N, as for predict")
    command.set_defaults(func=_app)

    command = sub.add_parser("import-data", help="copy a dataset folder or the Kaggle zip into data/ (aliases applied)")
    command.add_argument("source", type=Path, help="a folder holding Training/ and Testing/, or a .zip of one")
    command.add_argument("--dest", help="destination (default: paths.data from params.yaml)")
    command.add_argument("--params", default="params.yaml")
    command.set_defaults(func=_import_data)

    command = sub.add_parser(
        "recipe",
        help="run a named recipe (recipes/NAME.yaml) as a DVC experiment; no NAME: list them",
        description="Runs `dvc exp run -n NAME-<time> -S key=value ...` with the recipe's "
        "params. More `dvc exp run` options go after --, e.g. "
        "`braintumor recipe cpu-scratch -- --temp`.",
    )
    command.add_argument("name", nargs="?", help="the recipe (a file recipes/NAME.yaml)")
    command.add_argument("--dry-run", action="store_true", help="check the recipe and print the dvc command only")
    command.add_argument("--params", default="params.yaml")
    command.set_defaults(func=_recipe)

    command = sub.add_parser(
        "runs-url", help="print the MLflow UI address of the experiment's runs table (in the UI's Model training view)"
    )
    command.add_argument("--params", default="params.yaml")
    command.set_defaults(func=_runs_url)

    command = sub.add_parser(
        "monitor",
        help="test a prediction log (BRAINTUMOR_PREDICTION_LOG) for drift against "
        "evaluation's predictions; writes reports/monitor.html and .json",
    )
    command.add_argument("log", help="the prediction log file, or its folder (rotated files included)")
    command.add_argument(
        "--reference",
        default="plots/eval/predictions.csv",
        help="evaluation's predictions.csv (default) or an earlier prediction log (.jsonl)",
    )
    command.add_argument("--since", metavar="DATE", help="only answers from DATE on (UTC), e.g. 2026-12-01")
    command.add_argument("--output-dir", default="reports", help="where monitor.html and monitor.json go")
    command.add_argument("--fail-on-drift", action="store_true", help="exit 1 when an alert fires (a nightly job)")
    command.set_defaults(func=_monitor)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    passthrough: list[str] = []
    if "--" in argv:  # what follows goes to the command `braintumor recipe` runs
        argv, passthrough = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    if passthrough and args.command != "recipe":
        parser.error(f"unrecognized arguments after --: {' '.join(passthrough)}")
    args.dvc_args = passthrough
    _guarded(lambda: args.func(args))


if __name__ == "__main__":
    main()
