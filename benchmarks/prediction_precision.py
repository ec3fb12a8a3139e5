"""Is bf16 / fp16 autocast safe for predictions on this GPU? Probabilities and speed against fp32, in one run.

    python benchmarks/prediction_precision.py [--model models/model.pt] [--scans data/Testing] [--batch-size 64]

Every scan under --scans (any format `braintumor predict` reads) is prepared once, as `braintumor predict` does,
then predicted by the model file's own inference (temperature, TTA) on:
- cpu-fp32: the reference, the numbers evaluation gives on a CPU;
- cuda-fp32: TF32 off (what `--precision fp32`, the default, runs on a GPU);
- cuda-tf32: cuDNN's and cuBLAS's TF32 on (PyTorch's default for convolutions);
- cuda-bf16, cuda-fp16: `--precision bf16` / `fp16` (autocast).
For each: the largest absolute difference of any class probability from cpu-fp32 and from cuda-fp32, the share
of labels that agree with cpu-fp32, and the throughput (images/s, prepared images to probabilities, --repeats
timed passes after one warm-up).

The rule this checks (README, "Serving on a GPU"): a precision is safe when every class probability of every scan
stays within TOLERANCE = 0.01 of fp32 (so a label can only change where the two top classes are within 0.02 of
each other). Measure it on the trained model and real scans: an untrained network's near-uniform probabilities
pass too easily. The last line: `verdict bf16=<within|outside> fp16=<within|outside> max_diff_bf16=... ...`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from braintumor.runtime import HALF_PRECISION_TOLERANCE as TOLERANCE


def run(predictor, images: list[np.ndarray], repeats: int) -> tuple[np.ndarray, float]:
    probs = predictor.probabilities(images)  # warm-up: allocation, cuDNN autotuning
    start = time.perf_counter()
    for _ in range(repeats):
        probs = predictor.probabilities(images)  # returns CPU numpy: the GPU has finished
    return probs, repeats * len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/model.pt", help="a trained model file (default models/model.pt)")
    parser.add_argument("--scans", default="data/Testing", help="scans: files or a folder (default data/Testing)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over all scans (default 3)")
    parser.add_argument("--device", default="cuda", help="the GPU to measure (default cuda)")
    parser.add_argument("--output", help="also write the figures to this JSON file")
    args = parser.parse_args()

    from braintumor.errors import BrainTumorError
    from braintumor.model.predictor import Predictor
    from braintumor.predict import find_images
    from braintumor.runtime import prediction_device

    try:
        device = prediction_device(args.device)
    except BrainTumorError as exc:
        sys.exit(f"error: {exc}")
    if device.type != "cuda":
        sys.exit("this benchmark compares GPU precisions: give --device cuda (or cuda:N) on a machine with a GPU")
    files, _ = find_images([args.scans])
    reference = Predictor(args.model, device="cpu", batch_size=args.batch_size)
    images = [image for path in files for image in reference.images_of(reference.pictures(path))]
    if not images:
        sys.exit(f"no scans under {args.scans}")
    print(
        f"{len(images)} pictures from {len(files)} files; model {args.model}; {torch.cuda.get_device_name(device)}",
        flush=True,
    )

    results = {}
    cpu_probs, cpu_speed = run(reference, images, 1)
    results["cpu-fp32"] = (cpu_probs, cpu_speed)
    settings = [
        ("cuda-fp32", "fp32", False),
        ("cuda-tf32", "fp32", True),
        ("cuda-bf16", "bf16", False),
        ("cuda-fp16", "fp16", False),
    ]
    for name, precision, tf32 in settings:
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            print(f"{name}: this GPU has no bf16", flush=True)
            continue
        predictor = Predictor(args.model, device=device, batch_size=args.batch_size, precision=precision)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32 or precision != "fp32"
        results[name] = run(predictor, images, args.repeats)

    gpu_fp32 = results["cuda-fp32"][0]
    table = {}
    for name, (probs, speed) in results.items():
        table[name] = {
            "max_diff_vs_cpu_fp32": float(np.abs(probs - cpu_probs).max()),
            "max_diff_vs_cuda_fp32": float(np.abs(probs - gpu_fp32).max()),
            "label_agreement_vs_cpu_fp32": float((probs.argmax(1) == cpu_probs.argmax(1)).mean()),
            "images_per_s": speed,
        }
        row = table[name]
        print(
            f"{name:<10} max|dp| vs cpu-fp32 {row['max_diff_vs_cpu_fp32']:.2e}  vs cuda-fp32 "
            f"{row['max_diff_vs_cuda_fp32']:.2e}  labels agree {row['label_agreement_vs_cpu_fp32']:.2%}  "
            f"{speed:,.0f} img/s",
            flush=True,
        )
    verdict = {
        name.split("-")[1]: ("within" if table[name]["max_diff_vs_cpu_fp32"] <= TOLERANCE else "outside")
        for name in ("cuda-bf16", "cuda-fp16")
        if name in table
    }
    if args.output:
        Path(args.output).write_text(
            json.dumps(
                {
                    "tolerance": TOLERANCE,
                    "pictures": len(images),
                    "gpu": torch.cuda.get_device_name(device),
                    "results": table,
                },
                indent=2,
            )
            + "\n"
        )
    print(
        "verdict "
        + " ".join(f"{k}={v}" for k, v in verdict.items())
        + " "
        + " ".join(
            f"max_diff_{name.split('-')[1]}={table[name]['max_diff_vs_cpu_fp32']:.2e}"
            for name in ("cuda-bf16", "cuda-fp16")
            if name in table
        )
        + f" tolerance={TOLERANCE}"
    )


if __name__ == "__main__":
    main()
