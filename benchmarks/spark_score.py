"""Scans per second: deploy/spark_score.py on Spark local[N] against `braintumor predict`, same scans, same cores.

    flock /tmp/cpu.lock python benchmarks/spark_score.py [--data /work/shared/data/brain-tumor-mri]
                                                         [--scans 1000] [--master local[2]]

It copies the first --scans scans of <data>/Training (sorted, every class) to a temporary folder, builds a
from-scratch ResNet50 at the real serving size (image_size 224, resize_size 256) and logs and registers it in a
temporary SQLite store through the train stage's own path (benchmarks/serve_latency.py's build_and_register): an
untrained network costs the same compute as a trained one. Then, one run each, end to end as a user runs them:

- predict: `braintumor predict FOLDER --model model.pt --output predictions.csv` (one process; torch's threads);
- spark: `spark-submit --master local[N] deploy/spark_score.py FOLDER OUT --model models:/...` (N Python workers,
  one torch thread each, as Spark sets OMP_NUM_THREADS to spark.task.cpus), JVM start and model loads included.

Last line: scans=<n> predict_scans_s=<x> spark_scans_s=<y> ratio=<y/x> cpu="<model name>"
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from braintumor.processes import BIN, venv_env

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from serve_latency import build_and_register  # noqa: E402  (one definition of "the model the train stage logs")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=venv_env(env), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return seconds, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="/work/shared/data/brain-tumor-mri", help="holds Training/<class>/")
    parser.add_argument("--scans", type=int, default=1000)
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="braintumor-spark-bench-"))
    try:
        scans = workdir / "scans"
        scans.mkdir()
        files = sorted(p for p in (Path(args.data) / "Training").rglob("*") if p.is_file())[: args.scans]
        for path in files:
            shutil.copy(path, scans / f"{path.parent.name}-{path.name}")
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"}
        os.environ.update(env)
        os.chdir(workdir)  # the store's artifacts (mlartifacts/) go beside it, not into the repository
        uri = build_and_register(workdir)
        predict_s, _ = timed(
            [
                str(BIN / "braintumor"),
                "predict",
                str(scans),
                "--model",
                str(workdir / "models" / "model.pt"),
                "--output",
                "predictions.csv",
            ],
            workdir,
            env,
        )
        spark_s, out = timed(
            [
                str(BIN / "spark-submit"),
                "--master",
                args.master,
                "--conf",
                "spark.ui.enabled=false",
                str(REPO / "deploy" / "spark_score.py"),
                str(scans),
                "answers.parquet",
                "--model",
                uri,
            ],
            workdir,
            env,
        )
        print(out.strip().splitlines()[-1])
        n = len(files)
        print(f"predict: {predict_s:.1f} s, spark_score on {args.master}: {spark_s:.1f} s for {n} scans")
        print(
            f"scans={n} predict_scans_s={n / predict_s:.2f} spark_scans_s={n / spark_s:.2f} "
            f'ratio={predict_s / spark_s:.2f} cpu="{cpu_name()}"'
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
