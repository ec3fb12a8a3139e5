"""The served model's container build context (`make serve-image`): MLflow's model directory, the project's
Dockerfile (deploy/serve.Dockerfile) with the registered version filled in.

    python deploy/serve_image.py [--model models:/brain-tumor-classifier@champion] [--out build/serve-image]

MLFLOW_TRACKING_URI names the store (default sqlite:///mlflow.db, as the pipeline writes it). `mlflow models
generate-dockerfile` writes model_dir/ (the MLmodel file, model.pt, the braintumor package as code, pinned
requirements.txt) and its own Dockerfile, kept as Dockerfile.mlflow. An existing --out is replaced only when it
is one this script wrote (it holds .serve-image); anything else there is refused, not deleted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MARK = ".serve-image"


def registered_version(model_uri: str) -> str:
    """The version number a models:/name/N or models:/name@alias URI stands for now (MLflow's own resolver)."""
    from mlflow import MlflowClient
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    if not model_uri.startswith("models:/"):
        raise SystemExit(f"--model {model_uri}: give a registered model, models:/<name>@<alias> or models:/<name>/<N>")
    return str(get_model_name_and_version(MlflowClient(), model_uri)[1])


def build_context(model_uri: str, out: Path) -> str:
    """Writes the context into `out` (through a temporary folder beside it, so a failure leaves the old one)."""
    if out.exists() and not (out / MARK).is_file():
        raise SystemExit(f"{out} exists and was not written by serve_image.py; remove it or give another --out")
    from mlflow.exceptions import MlflowException

    try:
        version = registered_version(model_uri)
    except MlflowException as exc:
        store = os.environ.get("MLFLOW_TRACKING_URI")
        raise SystemExit(f"--model {model_uri}: not in {store} ({exc.message}); `dvc repro` registers one") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        mlflow = Path(sys.executable).with_name("mlflow")
        command = [str(mlflow) if mlflow.exists() else "mlflow", "models", "generate-dockerfile"]
        subprocess.run([*command, "-m", model_uri, "-d", str(staging / "context")], check=True)
        context = staging / "context"
        (context / "Dockerfile").rename(context / "Dockerfile.mlflow")
        dockerfile = (HERE / "serve.Dockerfile").read_text()
        assert "\nARG MODEL_VERSION=\n" in dockerfile, "deploy/serve.Dockerfile lost its ARG MODEL_VERSION= line"
        (context / "Dockerfile").write_text(
            dockerfile.replace("\nARG MODEL_VERSION=\n", f"\nARG MODEL_VERSION={version}\n")
        )
        (context / MARK).write_text(f"{model_uri} version {version}\n")
        if out.exists():
            shutil.rmtree(out)
        context.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/brain-tumor-classifier@champion")
    parser.add_argument("--out", type=Path, default=Path("build/serve-image"))
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path('mlflow.db').resolve()}")
    version = build_context(args.model, args.out)
    print(f"{args.out}: {args.model} (version {version}), deploy/serve.Dockerfile as its Dockerfile. Build it with")
    print(f"  docker build -t brain-tumor-classifier:{version} {args.out}")


if __name__ == "__main__":
    main()
