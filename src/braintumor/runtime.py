"""Where the work runs: device choice, mixed precision, threads, determinism and torchrun/DDP setup."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from braintumor.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_kind: str) -> DistInfo:
    """Under `torchrun --nproc_per_node N`, join the process group (NCCL on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(
        rank=int(os.environ["RANK"]), world_size=world_size, local_rank=int(os.environ.get("LOCAL_RANK", "0"))
    )
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return info


def select_device(preference: str, dist_info: DistInfo = DistInfo()) -> torch.device:
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    if preference == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device = 'cuda' but PyTorch sees no CUDA GPU here; use 'auto' or 'cpu'.")
        torch.cuda.set_device(dist_info.local_rank)
        return torch.device("cuda", dist_info.local_rank)
    if preference == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device = 'mps' but this PyTorch has no Apple MPS backend; use 'auto' or 'cpu'.")
    return torch.device(preference)


# ---- where predictions run (braintumor predict, the served model) ------------------------------------------------

PREDICTION_DEVICE_ENV = "MLFLOW_DEFAULT_PREDICTION_DEVICE"  # MLflow's own variable (its PyTorch flavor reads it)
PREDICTION_PRECISION_ENV = "BRAINTUMOR_PREDICTION_PRECISION"  # the served model's precision (fp32 unless set)
PREDICTION_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# bf16 / fp16 are safe for a model on a GPU when every class probability stays within this of fp32's
# (benchmarks/prediction_precision.py measures it); a label can then change only where the top two are that close.
HALF_PRECISION_TOLERANCE = 0.01


def prediction_device(choice: str | None = "auto", *, option: str = "--device") -> torch.device:
    """The device predictions run on, in the order MLflow's PyTorch flavor uses: an explicit `choice` (cpu, cuda,
    cuda:N); else (`auto` or None) MLFLOW_DEFAULT_PREDICTION_DEVICE when set; else CUDA when PyTorch sees a GPU;
    else the CPU. A GPU asked for and not there is a ConfigError, never a silent CPU run."""
    if choice in (None, "", "auto"):
        named = os.environ.get(PREDICTION_DEVICE_ENV, "").strip()
        if named:
            return _prediction_device(named, f"{PREDICTION_DEVICE_ENV}={named}", f"unset {PREDICTION_DEVICE_ENV}")
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    return _prediction_device(str(choice), f"{option} {choice}", f"use {option} auto or cpu")


def _prediction_device(name: str, where: str, instead: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{where}: not a device for predictions; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ConfigError(
                f"{where}, but PyTorch sees no CUDA GPU here (torch {torch.__version__}, {build}); {instead}"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"{where}, but there are only {torch.cuda.device_count()} CUDA GPU(s) "
                f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
            )
    return device


def prediction_autocast(device: torch.device, precision: str, *, option: str = "--precision") -> torch.dtype | None:
    """None (fp32) or the autocast dtype for predictions. bf16 and fp16 are for CUDA GPUs only, and opt-in: fp32 is
    the default until benchmarks/prediction_precision.py has shown them within tolerance on the GPU at hand."""
    if precision not in PREDICTION_PRECISIONS:
        raise ConfigError(f"{option} {precision!r} is not allowed: expected one of {', '.join(PREDICTION_PRECISIONS)}")
    dtype = PREDICTION_PRECISIONS[precision]
    if dtype is not None and device.type != "cuda":
        raise ConfigError(
            f"{option} {precision} runs on a CUDA GPU only, and predictions run on {device}; use fp32 there"
        )
    if dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{option} bf16, but this GPU has no bf16 support; use fp16 or fp32")
    return dtype


def strict_fp32(device: torch.device) -> None:
    """On a CUDA GPU, no TF32 in convolutions or matmuls (cuDNN allows it by default): fp32 means fp32."""
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def configure(device: torch.device, *, threads: int, deterministic: bool) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast_dtype(device: torch.device, *, amp: bool, cpu_bf16: bool | str) -> torch.dtype | None:
    """bf16 where the device supports it, fp16 on older GPUs, None for full fp32.

    cpu_bf16 "auto": bf16 on CPUs with AMX or AVX512-BF16 (bf16 matmuls about 4x fp32 there), fp32 elsewhere,
    where bf16 is emulated and slower."""
    if device.type == "cuda" and amp:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and (cpu_bf16 is True or (cpu_bf16 == "auto" and cpu_has_fast_bf16())):
        return torch.bfloat16
    return None


def cpu_has_fast_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Does this CPU have bf16 matrix instructions (Intel AMX, or AVX512-BF16 on Intel and AMD)?"""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:  # not Linux: no way to tell cheaply, and fp32 is never wrong
        pass
    return False


def precision_name(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states() -> dict:
    # Plain lists and tensors only, so checkpoints load with torch.load(weights_only=True).
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
