"""Where predictions run: --device auto|cpu|cuda, MLflow's MLFLOW_DEFAULT_PREDICTION_DEVICE, model_config, and
half precision only on CUDA and only when asked. The choice is tested on CPU, with CUDA's answers monkeypatched."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from braintumor.cli import main
from braintumor.errors import ConfigError
from braintumor.model.predictor import Predictor
from braintumor.runtime import HALF_PRECISION_TOLERANCE, PREDICTION_DEVICE_ENV, prediction_autocast, prediction_device

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def gpus(monkeypatch):
    """Pretend PyTorch sees `n` CUDA GPUs (0: none). Nothing is allocated on them."""
    monkeypatch.delenv(PREDICTION_DEVICE_ENV, raising=False)

    def pretend(n: int, bf16: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)

    return pretend


def test_auto_is_cuda_when_pytorch_sees_a_gpu_else_cpu(gpus):
    gpus(1)
    assert prediction_device("auto") == CUDA and prediction_device(None) == CUDA
    gpus(0)
    assert prediction_device("auto") == CPU


def test_mlflow_default_prediction_device_decides_auto_and_an_explicit_choice_wins(gpus, monkeypatch):
    gpus(2)
    monkeypatch.setenv(PREDICTION_DEVICE_ENV, "cpu")
    assert prediction_device("auto") == CPU
    assert prediction_device("cuda") == CUDA
    monkeypatch.setenv(PREDICTION_DEVICE_ENV, "cuda:1")
    assert prediction_device("auto") == torch.device("cuda", 1)
    assert prediction_device("cpu") == CPU
    monkeypatch.setenv(PREDICTION_DEVICE_ENV, "cuda:2")
    with pytest.raises(
        ConfigError,
        match=r"^MLFLOW_DEFAULT_PREDICTION_DEVICE=cuda:2, but there are only 2 CUDA "
        r"GPU\(s\) \(cuda:0 to cuda:1\)",
    ):
        prediction_device("auto")
    monkeypatch.setenv(PREDICTION_DEVICE_ENV, "tpu")
    with pytest.raises(
        ConfigError,
        match=r"^MLFLOW_DEFAULT_PREDICTION_DEVICE=tpu: not a device for predictions; "
        r"use auto, cpu, cuda or cuda:N",
    ):
        prediction_device("auto")


def test_cuda_without_a_gpu_is_an_error_not_a_cpu_run(gpus, monkeypatch):
    gpus(0)
    with pytest.raises(
        ConfigError,
        match=r"^--device cuda, but PyTorch sees no CUDA GPU here \(torch .*\); use "
        r"--device auto or cpu$",
    ):
        prediction_device("cuda")
    monkeypatch.setenv(PREDICTION_DEVICE_ENV, "cuda")
    with pytest.raises(
        ConfigError,
        match=r"^MLFLOW_DEFAULT_PREDICTION_DEVICE=cuda, but PyTorch sees no CUDA GPU "
        r"here .*; unset MLFLOW_DEFAULT_PREDICTION_DEVICE$",
    ):
        prediction_device("auto")


def test_half_precision_only_on_cuda_and_only_when_asked(gpus):
    gpus(1, bf16=True)
    assert prediction_autocast(CUDA, "fp32") is None and prediction_autocast(CPU, "fp32") is None
    assert prediction_autocast(CUDA, "bf16") is torch.bfloat16
    assert prediction_autocast(CUDA, "fp16") is torch.float16
    with pytest.raises(ConfigError, match=r"^--precision bf16 runs on a CUDA GPU only, and predictions run on cpu"):
        prediction_autocast(CPU, "bf16")
    with pytest.raises(ConfigError, match=r"^--precision 'int8' is not allowed: expected one of fp32, bf16, fp16"):
        prediction_autocast(CUDA, "int8")
    gpus(1, bf16=False)
    with pytest.raises(ConfigError, match=r"^--precision bf16, but this GPU has no bf16 support; use fp16 or fp32"):
        prediction_autocast(CUDA, "bf16")


def test_predict_device_cuda_without_a_gpu_exits_2_before_fetching_a_model(capsys, gpus, sample_root, tmp_path):
    gpus(0)
    scan = sample_root / "Testing" / "no_tumor" / "te_0000.jpg"
    with pytest.raises(SystemExit) as caught:
        main(["predict", str(scan), "--model", str(tmp_path / "no-such-model.pt"), "--device", "cuda"])
    out, err = capsys.readouterr()
    assert caught.value.code == 2 and out == ""
    assert err.splitlines()[0].startswith("error: --device cuda, but PyTorch sees no CUDA GPU here")


def test_predict_device_cpu_is_used(capsys, gpus, monkeypatch, model_file, sample_root):
    gpus(0)
    monkeypatch.setenv(PREDICTION_DEVICE_ENV, "cuda")  # --device cpu wins over it
    from braintumor import predict

    built = []

    class Recording(Predictor):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(predict, "Predictor", Recording)
    main(["predict", str(sample_root / "Testing" / "no_tumor"), "--model", str(model_file), "--device", "cpu"])
    assert len(built) == 1 and built[0].device == torch.device("cpu")
    assert next(built[0].model.parameters()).device == torch.device("cpu")  # the network is there too
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_served_model_reads_model_config_then_the_mlflow_variable(gpus, monkeypatch, model_file):
    from braintumor.serving.mlflow_model import PRECISION_ENV, BrainTumorClassifier

    gpus(0)
    monkeypatch.setenv(PREDICTION_DEVICE_ENV, "cuda")  # a GPU that is not there
    served = BrainTumorClassifier()
    served.load_context(SimpleNamespace(artifacts={"model": str(model_file)}, model_config={"device": "cpu"}))
    assert served.predictor.device == CPU and served.predictor.amp_dtype is None
    with pytest.raises(ConfigError, match=r"^MLFLOW_DEFAULT_PREDICTION_DEVICE=cuda, but PyTorch sees no CUDA GPU"):
        BrainTumorClassifier().load_context(SimpleNamespace(artifacts={"model": str(model_file)}, model_config={}))
    monkeypatch.delenv(PREDICTION_DEVICE_ENV)
    monkeypatch.setenv(PRECISION_ENV, "bf16")
    with pytest.raises(ConfigError, match=r"^BRAINTUMOR_PREDICTION_PRECISION bf16 runs on a CUDA GPU only"):
        BrainTumorClassifier().load_context(SimpleNamespace(artifacts={"model": str(model_file)}, model_config=None))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_stays_within_tolerance_of_fp32_on_a_gpu(model_file, sample_root, precision):
    scans = sorted((sample_root / "Testing").rglob("*.jpg"))
    reference = Predictor(model_file, device="cuda")
    images = [reference.load_image(p) for p in scans]
    fp32 = reference.probabilities(images)
    half = Predictor(model_file, device="cuda", precision=precision).probabilities(images)
    assert np.abs(half - fp32).max() <= HALF_PRECISION_TOLERANCE
