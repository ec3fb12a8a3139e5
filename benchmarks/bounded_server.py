"""Issue 28's rows 1, 6 and 7 sent to the served model behind nginx (deploy/serve_safe.py's configuration), then
to the same server bare: the answers, the server's memory (all its processes) and a good request's latency.

    python benchmarks/bounded_server.py [--data /work/shared/data/brain-tumor-mri] [--max-file-bytes 20000000]
        [--max-rows 4] [--json results.json]

The model is serve_load.py's (a from-scratch ResNet50 at 224/256 with its novelty score, registered through the
train stage's path into a temporary store). One `mlflow models serve --workers 1 --timeout 300`; nginx in front
of it with --max-rows files of --max-file-bytes (data.max_file_bytes of the proxy's params) and 4 requests at a
time. The proxied replay comes first: the bare one grows the server, and MLflow does not give the memory back.
Per row: the statuses, the RSS before, at its peak (sampled every 50 ms) and 2 s after, and its seconds.
Last line: JSON of every row (also written to --json).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import importlib.util
import io
import json
import os
import select
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from braintumor.processes import free_port, served_model, tree_rss_mb

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "deploy"))
import serve_safe  # noqa: E402  (deploy/ is not a package)

BIG = 200_000_000  # row 7's body


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def post(port: int, body: bytes, content_type: str = "application/json") -> tuple[int, int]:
    """(status, answer bytes) of one whole request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("POST", "/invocations", body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        return response.status, len(response.read())
    finally:
        conn.close()


def post_streamed(port: int, body: bytes) -> tuple[int, int]:
    """As `post`, but stop sending once the server answers (nginx refuses a body from its Content-Length)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=600)
    head = f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    with sock:
        sock.sendall(f"{head}\r\nConnection: close\r\n\r\n".encode())
        view, sent = memoryview(body), 0
        while sent < len(body) and not select.select([sock], [], [], 0)[0]:
            try:
                sent += sock.send(view[sent : sent + 2**20])
            except OSError:
                break
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ")[1]), len(answer)


def rows(dicom: bytes) -> dict[str, tuple[str, bytes, int]]:
    """Row -> (content type, body, how many at once)."""
    parquet = io.BytesIO()
    pd.DataFrame({"image": ["A" * 2**20] * 1500}).to_parquet(
        parquet, compression="brotli", write_statistics=False, store_schema=False
    )
    value = "!" * (BIG - 64)  # JSON that parses, a value that is no base64
    valid = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[value]]}}).encode()
    request = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(dicom).decode("ascii")]]}}
    return {
        "row 6: Parquet, 1,500 x 1 MiB": ("application/vnd.apache.parquet", parquet.getvalue(), 1),
        "row 7: 200 MB JSON, four at once": ("application/json", valid, 4),
        "row 7: 200 MB invalid JSON": ("application/json", b'{"dataframe_split": "' + b"a" * (BIG - 22), 1),
        "row 1: DICOM of 5,000 frames": ("application/json", json.dumps(request).encode(), 1),
    }


def replay(port: int, pid: int, content_type: str, body: bytes, at_once: int, *, proxied: bool) -> dict:
    peak, done = [tree_rss_mb(pid)], threading.Event()

    def send(_: int) -> tuple[int, int]:
        if proxied and content_type == "application/json":
            return post_streamed(port, body)
        return post(port, body, content_type)

    def sample() -> None:
        while not done.wait(0.05):
            peak.append(tree_rss_mb(pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    with ThreadPoolExecutor(at_once) as pool:
        answers = list(pool.map(send, range(at_once)))
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    time.sleep(2)
    return {
        "bytes": len(body),
        "statuses": [status for status, _ in answers],
        "answer_bytes": max(size for _, size in answers),
        "rss_before_mb": round(peak[0]),
        "rss_peak_mb": round(max(peak)),
        "rss_after_mb": round(tree_rss_mb(pid)),
        "seconds": round(seconds, 2),
    }


def good_latency_ms(port: int, body: bytes, count: int = 5) -> float:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        status, _ = post(port, body)
        assert status == 200, status
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/brain-tumor-mri"))
    parser.add_argument("--max-file-bytes", type=int, default=20_000_000)
    parser.add_argument("--max-rows", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    load = _load("serve_load", HERE / "serve_load.py")
    scan_files = _load("scan_files", HERE.parent / "tests" / "scan_files.py")
    dicom = scan_files.dicom_bytes(np.zeros((5000, 4, 4), np.uint8))
    results = {}
    with tempfile.TemporaryDirectory(prefix="bounded-server-") as tmp:
        workdir = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
        uri = load.build_and_register(workdir, args.data)
        good = load.request_bodies(args.data, 1, 1)[0]
        with served_model(uri, workdir / "server.log", cwd=workdir, request_timeout=300) as server:
            port = free_port()
            values = {
                "USER": serve_safe.user_line(),
                "LISTEN": f"127.0.0.1:{port}",
                "UPSTREAM": f"127.0.0.1:{server.port}",
                "MAX_ROWS": args.max_rows,
                "MAX_FILE_BYTES": args.max_file_bytes,
                "MAX_BODY_BYTES": serve_safe.body_cap(args.max_file_bytes, args.max_rows, serve_safe.MAX_BODY_MB)[0],
                "MAX_CONNECTIONS": 4,
                "CLIENT_TIMEOUT": 30,
                "SERVER_TIMEOUT": 300,
                "PROXY_READ_TIMEOUT": 310,
            }
            config = serve_safe.write_config(workdir / "proxy", values)
            with serve_safe.nginx(config, workdir / "proxy", f"http://127.0.0.1:{port}"):
                good_latency_ms(port, good, 2)  # the worker's first requests
                results["good request before, ms"] = good_latency_ms(port, good)
                for target, target_port, proxied in (("nginx", port, True), ("bare", server.port, False)):
                    for name, (content_type, body, at_once) in rows(dicom).items():
                        cell = replay(target_port, server.pid, content_type, body, at_once, proxied=proxied)
                        results[f"{target}: {name}"] = cell
                        print(f"{target}: {name}: {cell}", flush=True)
                    results[f"good request after {target}, ms"] = good_latency_ms(target_port, good)
                    print(f"good request after {target}: {results[f'good request after {target}, ms']} ms", flush=True)
    text = json.dumps(results)
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
