"""Time from upload to answer on `braintumor app`'s page server, against the bare Predictor on the same files, and
the page's weight (bytes served for the first view). One run.

    python benchmarks/app_latency.py [--model FILE] [--image-size 224] [--runs 7]
                                     [--data /work/shared/data/brain-tumor-mri]

Files: one 512x512 JPEG of the real dataset's Testing folder (as it is), and a 20-slice NIfTI volume (.nii.gz,
int16) stacked from 20 of its 512x512 Testing JPEGs. Without --data or with no such folder, synthetic 512x512
slices (braintumor.data.sample) stand in, and the output says so.

Model: --model FILE, else an untrained (from-scratch) ResNet50 at --image-size (resize_size: resize_size()):
latency does not depend on the weights, only on the size (64 is params.yaml's default, 224 the ImageNet recipe).

- app: `braintumor app --model FILE` on 127.0.0.1 at a free port; POST /api/scans with the file's bytes on one
  keep-alive connection, until the JSON answer is read (the labels, probabilities, novelty, CSV rows); and
  `+view`: that answer plus the shown picture and its Grad-CAM (GET picture.png and gradcam.png), which is what the
  page waits for before the first slice is drawn in full.
- bare: `Predictor.pictures` + `images_of` + `predict` on the same bytes, in a helper process started, like the
  server, in a session of its own (Linux autogroup scheduling shares the CPUs per session; serve_latency.py).
Each figure is the median of --runs runs after one warm-up. Last lines: one `key=value` line per file.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from braintumor.processes import free_port, start_process, stop_process, venv_env, wait_http

DATA = Path("/work/shared/data/brain-tumor-mri")


def scan_files(data: Path, folder: Path) -> tuple[dict[str, Path], str]:
    """{"jpeg_512": path, "nifti_20": path} and where their pixels came from."""
    from PIL import Image

    from braintumor.data.sample import synthetic_slice

    found = sorted(p for p in (data / "Testing").rglob("*.jpg") if Image.open(p).size == (512, 512))[:20]
    if len(found) == 20:
        jpeg = found[0].read_bytes()
        slices = [np.asarray(Image.open(p).convert("L")) for p in found]
        source = f"{data}/Testing: {found[0].relative_to(data)} and 20 of its 512x512 JPEGs stacked"
    else:
        images = [
            synthetic_slice(np.random.default_rng([7, i]), ("glioma", "none")[i % 2], size=512) for i in range(20)
        ]
        buffer = io.BytesIO()
        images[0].save(buffer, format="JPEG", quality=92)
        jpeg, slices = buffer.getvalue(), [np.asarray(image.convert("L")) for image in images]
        source = "synthetic 512x512 slices (no real dataset found)"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from scan_files import nifti_bytes

    volume = np.stack([s.T[::-1, ::-1] for s in slices], axis=2).astype(np.int16) * 16  # (X, Y, Z) RAS+
    files = {"jpeg_512": folder / "scan.jpg", "nifti_20": folder / "volume.nii.gz"}
    files["jpeg_512"].write_bytes(jpeg)
    files["nifti_20"].write_bytes(nifti_bytes(volume, gz=True))
    return files, source


def untrained_model(path: Path, image_size: int) -> None:
    import torch

    from braintumor.config import params_from_dict
    from braintumor.model.network import build_model, save_model
    from braintumor.model.transforms import Preprocessing

    params = params_from_dict(
        {"model": {"weights": "none", "image_size": image_size, "resize_size": resize_size(image_size)}}
    )
    torch.manual_seed(0)
    save_model(
        path,
        build_model("none", len(params.data.classes)),
        classes=params.data.classes,
        preprocessing=Preprocessing.from_config(params.model, params.preprocess),
        params=params.to_dict(),
        metrics={},
    )


def resize_size(image_size: int) -> int:
    """params.yaml's pair (64 -> 72) and the ImageNet recipe's (224 -> 256); else the same 8/7."""
    return {64: 72, 224: 256}.get(image_size, round(image_size * 8 / 7))


def bare_worker(model: str, files: list[str], runs: int) -> None:
    """The helper process: median seconds of the bare Predictor per file, as JSON on stdout."""
    from braintumor.model.predictor import Predictor

    predictor = Predictor(model)
    result = {}
    for name in files:
        data = Path(name).read_bytes()
        times = []
        for _ in range(runs + 1):
            start = time.perf_counter()
            predictor.predict(predictor.images_of(predictor.pictures(data)))
            times.append(time.perf_counter() - start)
        result[name] = statistics.median(times[1:])
    print(json.dumps(result))


def timed_app(host: str, port: int, data: bytes, runs: int) -> tuple[float, float]:
    """Median seconds of (POST -> answer) and (POST -> answer + picture + Grad-CAM of the shown one)."""
    conn = http.client.HTTPConnection(host, port, timeout=600)

    def get(path: str) -> bytes:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (path, response.status)
        return body

    answers, views = [], []
    for _ in range(runs + 1):
        start = time.perf_counter()
        conn.request("POST", "/api/scans", body=data, headers={"Content-Type": "application/octet-stream"})
        response = conn.getresponse()
        answer = json.loads(response.read())
        answered = time.perf_counter()
        assert response.status == 200 and "pictures" in answer, answer
        shown = (len(answer["pictures"]) - 1) // 2 if answer["volume"] else 0  # the page shows the middle slice
        get(f"/api/scans/{answer['scan']}/{shown}/picture.png")
        get(f"/api/scans/{answer['scan']}/{shown}/gradcam.png")
        answers.append(answered - start)
        views.append(time.perf_counter() - start)
    conn.close()
    return statistics.median(answers[1:]), statistics.median(views[1:])


def page_weight(host: str, port: int) -> dict[str, int]:
    """Bytes of every body the first view loads: the page, what it links (/static/...), and /api/model."""
    conn = http.client.HTTPConnection(host, port, timeout=60)
    sizes = {}
    for path in ["/"]:
        conn.request("GET", path)
        page = conn.getresponse().read()
        sizes[path] = len(page)
    for path in [*re.findall(rb'(?:src|href)="(/static/[^"]+)"', page), b"/api/model"]:
        conn.request("GET", path.decode())
        sizes[path.decode()] = len(conn.getresponse().read())
    conn.close()
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model file (default: an untrained ResNet50 at --image-size)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--bare-worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_worker:
        return bare_worker(args.model, args.bare_worker, args.runs)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = args.model
        if not model:
            model = str(folder / "model.pt")
            untrained_model(Path(model), args.image_size)
        files, source = scan_files(args.data, folder)
        what = args.model or (
            f"untrained ResNet50, image_size {args.image_size}, resize_size {resize_size(args.image_size)}"
        )
        print(f"model: {what}\nfiles: {source}")
        helper = subprocess.run(
            [
                sys.executable,
                __file__,
                "--model",
                model,
                "--runs",
                str(args.runs),
                "--bare-worker",
                *map(str, files.values()),
            ],
            capture_output=True,
            text=True,
            check=True,
            start_new_session=True,
            env=venv_env(),
        )
        bare = json.loads(helper.stdout.strip().splitlines()[-1])
        port, log = free_port(), folder / "app.log"
        proc = start_process(
            [sys.executable, "-m", "braintumor.cli", "app", "--model", model, "--port", str(port)], log, env=venv_env()
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/api/model", proc, log, "braintumor app", timeout=300)
            weight = page_weight("127.0.0.1", port)
            timings = {name: timed_app("127.0.0.1", port, path.read_bytes(), args.runs) for name, path in files.items()}
        finally:
            stop_process(proc)
    print(
        f"page weight, first view: {sum(weight.values()):,} bytes "
        f"({', '.join(f'{k} {v:,}' for k, v in weight.items())})"
    )
    for name, path in files.items():
        answer, view = timings[name]
        base = bare[str(path)]
        print(
            f"{name}: bare_ms={1000 * base:.0f} app_answer_ms={1000 * answer:.0f} ratio={answer / base:.2f} "
            f"app_answer_and_view_ms={1000 * view:.0f} ratio_view={view / base:.2f}"
        )


if __name__ == "__main__":
    main()
