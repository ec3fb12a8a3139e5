"""The served model (`mlflow models serve`) under concurrent load, against the bare Predictor on the same cores.

    python benchmarks/serve_load.py [--model-uri models:/brain-tumor-classifier@champion] [--duration 60]
        [--clients 1,4,16,64] [--scans 1,16] [--workers 1,2] [--request-timeout 60] [--threads 0]
        [--data /work/shared/data/brain-tumor-mri] [--prediction-log PATH] [--json results.json]

By default it builds its own model in a temporary folder: a from-scratch ResNet50 at the real serving size
(image_size 224, resize_size 256) with a novelty score fitted on real Training scans (so every answer costs what a
trained model's does: the forward pass and the Mahalanobis score), logged and registered through the training
stage's own path (`pipeline.log_served_model`). With --model-uri it serves a model from MLFLOW_TRACKING_URI.

For each --workers value it starts one server and, for each request size (--scans) and client count (--clients),
runs that many client threads for --duration seconds, each sending requests of real Testing scans back to back on
its own keep-alive connection. Per cell: requests/s and scans/s (answers completed in the window over its length),
p50/p95/p99 latency, errors (HTTP status other than 200, 504 = the server's request timeout, or a failed
connection), and the RSS of all the server's processes before the cell, at its peak and after it (the requests still
in flight at the end are waited for). The bare Predictor's batched throughput (`serving.requests.answer_request` on
frames of 16 base64 scans: decoding included, HTTP not) is timed in a process of its own session, as the server
runs in one.

Last line: JSON of every cell (also written to --json).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from braintumor.processes import served_model, tree_rss_mb, venv_env
from braintumor.serving.requests import answer_request

DATA = Path("/work/shared/data/brain-tumor-mri")


def build_and_register(workdir: Path, data: Path) -> str:
    """A ResNet50 at 224/256 with a novelty score (fitted on 48 Training scans' features, threshold at the 0.95
    quantile of 48 others), logged and registered as the train stage does it. Returns its URI."""
    import torch

    from braintumor.config import params_from_dict
    from braintumor.model.inference import forward_outputs
    from braintumor.model.network import build_model, save_model
    from braintumor.model.novelty import fit_novelty
    from braintumor.model.predictor import Predictor
    from braintumor.model.transforms import Preprocessing
    from braintumor.pipeline import log_served_model
    from braintumor.tracking.runs import RunTracker

    params = params_from_dict(
        {
            "paths": {"data": str(workdir / "data"), "model": str(workdir / "models" / "model.pt")},
            "model": {"weights": "none", "image_size": 224, "resize_size": 256},
            "tracking": {"experiment": "serve-load", "registered_model": "brain-tumor-classifier-load"},
        }
    )
    classes = list(params.data.classes)
    torch.manual_seed(0)
    model = build_model("none", len(classes)).eval()
    prep = Preprocessing.from_config(params.model, params.preprocess)
    common = dict(classes=classes, preprocessing=prep, params=params.to_dict(), metrics={})
    save_model(params.paths.model, model, **common)
    predictor = Predictor(params.paths.model)
    files = [f for c in classes for f in sorted((data / "Training" / c).glob("*.jpg"))[:24]]
    if len(files) < 32:
        raise SystemExit(f"{data}/Training/<class>/*.jpg: {len(files)} scans; give --data the dataset's folder")
    images = torch.from_numpy(np.stack([predictor.load_image(f) for f in files]))[:, None]
    labels = np.array([classes.index(f.parent.name) for f in files])
    features = forward_outputs(
        model,
        [(images[i : i + 16], torch.zeros(0)) for i in range(0, len(files), 16)],
        torch.device("cpu"),
        predictor.transform,
        features=True,
    ).features
    fit, held = np.arange(len(files)) % 2 == 0, np.arange(len(files)) % 2 == 1
    novelty = fit_novelty(features[fit], labels[fit], features[held], quantile=0.95)
    save_model(params.paths.model, model, **common, novelty=novelty.to_dict())
    example = predictor.load_image(files[0])
    tracker = RunTracker(params)
    try:
        version = log_served_model(tracker, params, example)
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end()
    return f"models:/{params.tracking.registered_model}/{version}"


def request_bodies(data: Path, scans: int, count: int, seed: int = 0) -> list[bytes]:
    """`count` request bodies of `scans` real Testing scans each, drawn at random."""
    files = sorted((data / "Testing").rglob("*.jpg"))
    rng = random.Random(seed)
    encoded = {f: base64.b64encode(f.read_bytes()).decode("ascii") for f in rng.sample(files, min(len(files), 256))}
    pool = list(encoded)
    return [
        json.dumps(
            {"dataframe_split": {"columns": ["image"], "data": [[encoded[f]] for f in rng.sample(pool, scans)]}}
        ).encode()
        for _ in range(count)
    ]


def client(port: int, bodies: list[bytes], deadline: float, timeout: float, results: list, seed: int) -> None:
    """Requests back to back until `deadline`: (start, latency s, status or error name) per request."""
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    while time.perf_counter() < deadline:
        body = rng.choice(bodies)
        start = time.perf_counter()
        try:
            conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            status = type(exc).__name__
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        results.append((start, time.perf_counter() - start, status))
    conn.close()


def run_cell(port: int, pid: int, bodies: list[bytes], clients: int, duration: float, timeout: float) -> dict:
    rss_before = tree_rss_mb(pid)
    peak = [rss_before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            peak[0] = max(peak[0], tree_rss_mb(pid))

    results: list = []
    start = time.perf_counter()
    deadline = start + duration
    threads = [
        threading.Thread(target=client, args=(port, bodies, deadline, timeout, results, i)) for i in range(clients)
    ]
    sampler = threading.Thread(target=sample)
    for thread in [sampler, *threads]:
        thread.start()
    for thread in threads:
        thread.join()
    drained = time.perf_counter() - deadline
    stop.set()
    sampler.join()
    time.sleep(2)  # the server settles
    scans = len(json.loads(bodies[0])["dataframe_split"]["data"])
    in_window = [r for r in results if r[0] + r[1] <= deadline and r[2] == 200]
    latencies = np.array([r[1] for r in results if r[2] == 200]) * 1000
    errors: dict = {}
    for r in results:
        if r[2] != 200:
            errors[str(r[2])] = errors.get(str(r[2]), 0) + 1
    return {
        "clients": clients,
        "scans_per_request": scans,
        "requests": len(results),
        "requests_s": len(in_window) / duration,
        "scans_s": len(in_window) * scans / duration,
        "p50_ms": _pct(latencies, 50),
        "p95_ms": _pct(latencies, 95),
        "p99_ms": _pct(latencies, 99),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "drain_s": round(drained, 1),
        "rss_before_mb": round(rss_before),
        "rss_peak_mb": round(peak[0]),
        "rss_after_mb": round(tree_rss_mb(pid)),
    }


def _pct(values: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if len(values) else None


def bare_worker(model_path: str, data: str, repeats: int) -> None:
    """--bare: serving.requests.answer_request on 16-scan frames, as the served model runs it; prints scans/s."""
    import pandas as pd
    import torch

    from braintumor.model.predictor import Predictor

    predictor = Predictor(model_path)
    bodies = request_bodies(Path(data), 16, repeats + 1, seed=1)
    frames = [pd.DataFrame({"image": [row[0] for row in json.loads(b)["dataframe_split"]["data"]]}) for b in bodies]
    answer_request(predictor, frames[0])  # warm-up
    start = time.perf_counter()
    for frame in frames[1:]:
        answer_request(predictor, frame)
    seconds = time.perf_counter() - start
    print(json.dumps({"scans_s": 16 * repeats / seconds, "threads": torch.get_num_threads()}), flush=True)


def bare_throughput(model_path: Path, data: Path, env: dict, repeats: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--bare", str(model_path), str(data), str(repeats)],
        env=env,
        capture_output=True,
        text=True,
        start_new_session=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", help="serve this registered model from MLFLOW_TRACKING_URI")
    parser.add_argument("--duration", type=float, default=60, help="seconds per cell (default 60)")
    parser.add_argument("--clients", default="1,4,16,64", help="concurrent clients per cell (default 1,4,16,64)")
    parser.add_argument("--scans", default="1,16", help="scans per request (default 1,16)")
    parser.add_argument("--workers", default="1,2", help="mlflow models serve --workers values (default 1,2)")
    parser.add_argument("--request-timeout", type=int, default=60, help="mlflow models serve --timeout (60)")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of the server (default: torch's)")
    parser.add_argument("--bare-repeats", type=int, default=8, help="16-scan frames for the bare Predictor")
    parser.add_argument("--data", type=Path, default=DATA, help="the dataset (Training/ and Testing/)")
    parser.add_argument("--prediction-log", help="BRAINTUMOR_PREDICTION_LOG of the server")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--bare", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        bare_worker(args.bare[0], args.bare[1], int(args.bare[2]))
        return

    workdir = Path(tempfile.mkdtemp(prefix="serve-load-"))
    env = venv_env()
    if args.threads > 0:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    if args.prediction_log:
        env["BRAINTUMOR_PREDICTION_LOG"] = str(Path(args.prediction_log).resolve())
    cwd = Path.cwd()
    cells, bare = [], None
    try:
        if args.model_uri:
            model_uri = args.model_uri
            env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{cwd / 'mlflow.db'}")
        else:
            env["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
            os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
            os.chdir(workdir)
            t0 = time.perf_counter()
            model_uri = build_and_register(workdir, args.data)
            print(f"setup: built and registered {model_uri} in {time.perf_counter() - t0:.0f} s", flush=True)
        os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
        from braintumor.tracking.runs import download_model_file

        bare = bare_throughput(download_model_file(model_uri), args.data, env, args.bare_repeats)
        print(
            f"bare Predictor: {bare['scans_s']:.2f} scans/s (16-scan frames, torch threads {bare['threads']})",
            flush=True,
        )
        sizes = [int(s) for s in args.scans.split(",")]
        bodies = {s: request_bodies(args.data, s, 32, seed=s) for s in sizes}
        for workers in (int(w) for w in args.workers.split(",")):
            t0 = time.perf_counter()
            with served_model(
                model_uri,
                workdir / f"server-{workers}.log",
                env=env,
                workers=workers,
                request_timeout=args.request_timeout,
                timeout=600,
            ) as server:
                print(
                    f"server: --workers {workers} --timeout {args.request_timeout}, ready in "
                    f"{time.perf_counter() - t0:.0f} s",
                    flush=True,
                )
                for _ in range(2 * workers):  # warm-up: each worker's first requests
                    run_cell(server.port, server.pid, bodies[sizes[0]], workers, 2, args.request_timeout + 60)
                start_rss = tree_rss_mb(server.pid)
                for scans in sizes:
                    for clients in (int(c) for c in args.clients.split(",")):
                        cell = run_cell(
                            server.port, server.pid, bodies[scans], clients, args.duration, args.request_timeout + 60
                        )
                        cell.update(
                            workers=workers,
                            server_start_rss_mb=round(start_rss),
                            ratio_to_bare=round(cell["scans_s"] / bare["scans_s"], 2),
                        )
                        cells.append(cell)
                        print(json.dumps(cell), flush=True)
    finally:
        os.chdir(cwd)
        shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "duration_s": args.duration,
        "request_timeout_s": args.request_timeout,
        "bare": bare,
        "cells": cells,
        "threads": args.threads or "torch default",
        "cpu_count": os.cpu_count(),
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
