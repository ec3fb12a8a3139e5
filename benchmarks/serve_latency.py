"""Latency of the served model (`mlflow models serve`) against the bare network's forward pass, in one run.

    python benchmarks/serve_latency.py [--model-uri models:/brain-tumor-classifier@champion] [--requests 100]
                                       [--device auto|cpu|cuda] [--precision fp32|bf16|fp16]

By default it builds its own setup in a temporary folder: a from-scratch ResNet50 at the real serving size
(image_size 224, resize_size 256), logged and registered in a temporary SQLite store through the training stage's
own path (`pipeline.log_served_model` -> `RunTracker.log_served_model`), so the served model is the project's
pyfunc. With --model-uri it serves a model from the store MLFLOW_TRACKING_URI names (default: ./mlflow.db).

It serves the model on 127.0.0.1 at a free port and, for one 512x512 JPEG:
- serve: p50 and p95 round-trip latency over --requests sequential requests (one keep-alive connection; the
  request body is built once, so client-side encoding is not counted);
- forward: the bare model's time for the same image, `Predictor.probabilities` on the preprocessed image,
  p50 over --forward-runs runs, with the server's torch thread count (torch's default in both, or --threads);
  forward runs and requests alternate in --rounds rounds, so both see the same load on a shared machine;
- batch16: throughput with requests of 16 different 512x512 JPEGs.
The server is always stopped at the end. The server and the forward timing run on the same device and precision:
--device sets MLFLOW_DEFAULT_PREDICTION_DEVICE for both (default auto: a GPU when there is one), --precision sets
BRAINTUMOR_PREDICTION_PRECISION (default fp32).

The forward pass is timed in a helper process started, like the server, in a session of its own: Linux's
autogroup scheduling gives each session an equal share of the CPUs, so on a busy machine a forward pass timed
in this script's session (shared with whatever else the shell runs) is not comparable with the server's.

Last line: forward_p50_ms=<ms> serve_p50_ms=<ms> serve_p95_ms=<ms> ratio=<x> batch16_img_s=<n>
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from braintumor.processes import served_model, venv_env

REPO = Path(__file__).resolve().parents[1]


def jpeg_bytes(seed: int, size: int = 512) -> bytes:
    from braintumor.data.sample import synthetic_slice

    lesion = ("glioma", "meningioma", "pituitary", "none")[seed % 4]
    buffer = io.BytesIO()
    synthetic_slice(np.random.default_rng([7, seed]), lesion, size=size).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def build_and_register(workdir: Path) -> str:
    """A ResNet50 model file at 224/256, logged and registered the way the train stage does it. Returns its URI."""
    import torch

    from braintumor.config import params_from_dict
    from braintumor.data.cache import load_image
    from braintumor.model.network import build_model, save_model
    from braintumor.model.transforms import Preprocessing
    from braintumor.pipeline import log_served_model
    from braintumor.scans.limits import ImageLimits
    from braintumor.tracking.runs import RunTracker

    params = params_from_dict(
        {
            "paths": {"data": str(workdir / "data"), "model": str(workdir / "models" / "model.pt")},
            "model": {"weights": "none", "image_size": 224, "resize_size": 256},
            "tracking": {"experiment": "serve-latency", "registered_model": "brain-tumor-classifier-bench"},
        }
    )
    torch.manual_seed(0)
    model = build_model("none", len(params.data.classes))
    prep = Preprocessing.from_config(params.model, params.preprocess)
    save_model(
        params.paths.model, model, classes=params.data.classes, preprocessing=prep, params=params.to_dict(), metrics={}
    )
    example = load_image(jpeg_bytes(0), prep.scan, ImageLimits.of(params.data))
    tracker = RunTracker(params)
    try:
        version = log_served_model(tracker, params, example)
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end()
    return f"models:/{params.tracking.registered_model}/{version}"


def body_for(images: list[bytes]) -> bytes:
    rows = [[base64.b64encode(b).decode("ascii")] for b in images]
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()


def post(conn: http.client.HTTPConnection, body: bytes) -> dict:
    try:
        conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
    except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
        conn.close()  # the server closed an idle keep-alive connection (uvicorn: after 5 s); reconnect once
        conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
    payload = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {payload[:2000].decode(errors='replace')}")
    return json.loads(payload)


def timed(action, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return times


def split(total: int, rounds: int) -> list[int]:
    return [total // rounds + (i < total % rounds) for i in range(rounds)]


def forward_worker(model_path: str, image_path: str) -> None:
    """--forward-worker: load the model, then for each number N read on stdin, time N forward passes."""
    import torch

    from braintumor.model.predictor import Predictor
    from braintumor.runtime import PREDICTION_PRECISION_ENV as PRECISION_ENV
    from braintumor.runtime import prediction_device

    # as the served model chooses: MLFLOW_DEFAULT_PREDICTION_DEVICE, else CUDA when present; the same precision
    predictor = Predictor(
        model_path, device=prediction_device("auto"), precision=os.environ.get(PRECISION_ENV) or "fp32"
    )
    image = predictor.load_image(Path(image_path).read_bytes())
    probs = predictor.probabilities([image])[0]
    for _ in range(3):  # warm-up: the first calls allocate and pick kernels
        predictor.probabilities([image])
    print(
        json.dumps(
            {
                "classes": predictor.classes,
                "probabilities": probs.tolist(),
                "threads": torch.get_num_threads(),
                "device": str(predictor.device),
                "precision": os.environ.get(PRECISION_ENV) or "fp32",
            }
        ),
        flush=True,
    )
    for line in sys.stdin:
        print(json.dumps(timed(lambda: predictor.probabilities([image]), int(line))), flush=True)


class ForwardTimer:
    """The --forward-worker process, in a session of its own (as the server is)."""

    def __init__(self, model_path: Path, image_path: Path, env: dict) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--forward-worker", str(model_path), str(image_path)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.info = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the forward worker exited ({self.proc.wait()})")
        return json.loads(line)

    def times(self, n: int) -> list[float]:
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        return self._read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def measure(
    port: int, image: bytes, timer: ForwardTimer, args
) -> tuple[list[float], list[float], list[float], float, float]:
    """(forward times, single-image request times, 16-image request times, the largest difference between the
    served and the bare probabilities, the single-image request's KiB), forward runs and requests alternating."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    one = body_for([image])
    served = post(conn, one)["predictions"][0]
    drift = max(abs(served[c] - p) for c, p in zip(timer.info["classes"], timer.info["probabilities"]))
    for _ in range(3):  # warm-up
        post(conn, one)
    forward, serve = [], []
    for n_forward, n_requests in zip(split(args.forward_runs, args.rounds), split(args.requests, args.rounds)):
        forward += timer.times(n_forward)
        serve += timed(lambda: post(conn, one), n_requests)

    batch = body_for([jpeg_bytes(seed) for seed in range(16)])
    post(conn, batch)  # warm-up
    batch_times = timed(lambda: post(conn, batch), args.batch_requests)
    conn.close()
    return forward, serve, batch_times, drift, len(one) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-uri",
        help="serve this registered model (e.g. models:/brain-tumor-classifier"
        "@champion) from MLFLOW_TRACKING_URI instead of building one",
    )
    parser.add_argument("--requests", type=int, default=100, help="sequential single-image requests (default 100)")
    parser.add_argument("--forward-runs", type=int, default=30, help="bare forward passes (default 30)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds that alternate forward runs and requests")
    parser.add_argument("--batch-requests", type=int, default=4, help="requests of 16 images (default 4)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads for the server and the forward timing (default: torch's default)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (default), cpu, cuda or cuda:N, for the server and the forward timing"
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="bf16 / fp16 autocast on a GPU (default fp32)",
    )
    parser.add_argument("--ready-timeout", type=float, default=180, help="seconds to wait for the server")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (server log, store)")
    parser.add_argument("--forward-worker", nargs=2, metavar=("MODEL", "IMAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.forward_worker:
        forward_worker(*args.forward_worker)
        return

    workdir = Path(tempfile.mkdtemp(prefix="serve-latency-"))
    env = venv_env()  # uvicorn is in the venv
    if args.threads > 0:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    if args.device != "auto":
        env["MLFLOW_DEFAULT_PREDICTION_DEVICE"] = args.device
    env["BRAINTUMOR_PREDICTION_PRECISION"] = args.precision
    timer = None
    cwd = Path.cwd()
    try:
        if args.model_uri:
            model_uri = args.model_uri
            env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{REPO / 'mlflow.db'}")
        else:
            # The store, and its artifacts (beside the project root, here the temporary folder), are temporary.
            env["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
            os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
            os.chdir(workdir)
            t0 = time.perf_counter()
            model_uri = build_and_register(workdir)
            print(f"setup: built and registered {model_uri} in {time.perf_counter() - t0:.1f} s", flush=True)
        os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]

        from braintumor.tracking.runs import download_model_file

        image = jpeg_bytes(0)
        (workdir / "image.jpg").write_bytes(image)
        timer = ForwardTimer(download_model_file(model_uri), workdir / "image.jpg", env)
        t0 = time.perf_counter()
        with served_model(model_uri, workdir / "server.log", env=env, timeout=args.ready_timeout) as server:
            print(f"server: {model_uri} on {server.url}, ready in {time.perf_counter() - t0:.1f} s", flush=True)
            forward, serve, batch_times, drift, request_kib = measure(server.port, image, timer, args)
    finally:
        if timer is not None:
            timer.stop()
        os.chdir(cwd)
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    forward_p50 = float(np.percentile(forward, 50)) * 1000
    serve_p50, serve_p95 = (float(v) * 1000 for v in np.percentile(serve, [50, 95]))
    img_s = 16 * len(batch_times) / sum(batch_times)
    print(
        f"image: 512x512 JPEG, {len(image) / 1024:.0f} KiB ({request_kib:.0f} KiB request); device "
        f"{timer.info['device']} ({timer.info['precision']}); torch threads {timer.info['threads']}; served and "
        f"bare probabilities differ by at most {drift:.1e}"
    )
    print(f"forward: p50 {forward_p50:.1f} ms, min {min(forward) * 1000:.1f} ms over {len(forward)} runs")
    print(
        f"serve: p50 {serve_p50:.1f} ms, p95 {serve_p95:.1f} ms, min {min(serve) * 1000:.1f} ms over "
        f"{len(serve)} requests; p50 overhead {serve_p50 - forward_p50:.1f} ms"
    )
    print(
        f"batch16: {img_s:.2f} img/s over {len(batch_times)} requests "
        f"({np.median(batch_times) * 1000:.0f} ms per request)"
    )
    print(
        f"forward_p50_ms={forward_p50:.1f} serve_p50_ms={serve_p50:.1f} serve_p95_ms={serve_p95:.1f} "
        f"ratio={serve_p50 / forward_p50:.2f} batch16_img_s={img_s:.1f}"
    )


if __name__ == "__main__":
    main()
