"""`braintumor monitor` on real served logs: a feed like Testing, and the same feed drifted.

    python benchmarks/served_drift.py [--model-uri models:/brain-tumor-classifier@champion --reference
        plots/eval/predictions.csv] [--data /work/shared/data/brain-tumor-mri] [--out reports/served-drift]
        [--scans 190] [--drifted 0.3]

The model is --model-uri from MLFLOW_TRACKING_URI (a trained one: with --reference, evaluation's predictions.csv
of it) or, without it, serve_load.py's (a from-scratch, untrained ResNet50 at 224/256 with a novelty score fitted on
real Training scans; its reference is then a served log of --scans Testing scans, reference.jsonl). It is served
by `mlflow models serve --workers 2` with BRAINTUMOR_PREDICTION_LOG set, and sent --scans other Testing scans, one
per request, twice:
- control.jsonl: the scans as they are;
- served.jsonl: the same scans, of which the share --drifted has its intensities inverted (dark skull, bright
  fluid: what a T2-weighted or a mislabelled series looks like next to T1/T1c slices).
Then `braintumor monitor LOG --reference REF --output-dir OUT` for each (OUT/monitor.html for the drifted feed,
OUT/control/ for the control). Prints both alert lists.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import DATA, build_and_register  # noqa: E402

from braintumor.processes import BIN, served_model, venv_env  # noqa: E402


def encoded(path: Path, invert: bool) -> str:
    data = path.read_bytes()
    if invert:
        buffer = io.BytesIO()
        ImageOps.invert(Image.open(io.BytesIO(data)).convert("L")).save(buffer, format="JPEG", quality=95)
        data = buffer.getvalue()
    return base64.b64encode(data).decode("ascii")


def send(url: str, files: list[Path], inverted: set[Path]) -> None:
    for path in files:
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[encoded(path, path in inverted)]]}})
        request = urllib.request.Request(
            f"{url}/invocations", body.encode(), {"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.status == 200, response.status


def monitor(log: Path, reference: Path, out: Path, env: dict) -> dict:
    command = [str(BIN / "braintumor"), "monitor", str(log), "--reference", str(reference), "--output-dir", str(out)]
    subprocess.run(command, env=env, check=True)
    return json.loads((out / "monitor.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", help="a registered model in MLFLOW_TRACKING_URI (default: build one)")
    parser.add_argument("--reference", type=Path, help="with --model-uri: its evaluation's predictions.csv")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=Path("reports/served-drift"))
    parser.add_argument("--scans", type=int, default=190, help="scans per log (default 190: Testing has 394)")
    parser.add_argument("--drifted", type=float, default=0.3, help="share of the served log inverted (0.3)")
    args = parser.parse_args()
    if bool(args.model_uri) != bool(args.reference):
        raise SystemExit("give --model-uri and --reference together (a model and its evaluation's predictions.csv)")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    files = sorted((args.data / "Testing").rglob("*.jpg"))
    random.Random(0).shuffle(files)
    if len(files) < 2 * args.scans:
        raise SystemExit(f"{args.data}/Testing: {len(files)} scans, fewer than 2 x --scans {args.scans}")
    reference_files, served_files = files[: args.scans], files[args.scans : 2 * args.scans]
    inverted = set(served_files[: round(args.drifted * args.scans)])
    random.Random(1).shuffle(served_files)
    with tempfile.TemporaryDirectory(prefix="served-drift-") as tmp:
        workdir = Path(tmp)
        if args.model_uri:
            env = venv_env()
            model_uri, reference = args.model_uri, args.reference.resolve()
            feeds = []
        else:
            env = venv_env({"MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"})
            os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
            cwd = Path.cwd()
            os.chdir(workdir)
            try:
                model_uri = build_and_register(workdir, args.data.resolve())
            finally:
                os.chdir(cwd)
            reference = out / "reference.jsonl"
            feeds = [("reference", reference_files, set())]
        feeds += [("control", served_files, set()), ("served", served_files, inverted)]
        for name, sent, flipped in feeds:
            log = out / f"{name}.jsonl"
            log.unlink(missing_ok=True)
            served_env = {**env, "BRAINTUMOR_PREDICTION_LOG": str(log)}
            with served_model(model_uri, workdir / f"{name}.log", env=served_env, workers=2) as server:
                send(server.url, sent, flipped)
            print(f"{name}: {len(log.read_text().splitlines())} answers logged, {len(flipped)} of them inverted")
        results = {
            f"drifted feed ({len(inverted)} of {args.scans} inverted)": monitor(
                out / "served.jsonl", reference, out, env
            ),
            "control (the same scans as they are)": monitor(out / "control.jsonl", reference, out / "control", env),
        }
    for name, result in results.items():
        alerts = result.get("alerts", [])
        print(f"{name}: {len(alerts)} alert(s)")
        for alert in alerts:
            print(f"  {alert['test']}: {alert['figures']}")
    print(json.dumps({name: result.get("alerts", []) for name, result in results.items()}))


if __name__ == "__main__":
    main()
