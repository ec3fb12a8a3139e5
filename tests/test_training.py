"""The training core: resume after a kill, determinism, divergence, freezing, optimizer and schedule."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
from helpers import tiny_params
from torch import nn

from braintumor.data.cache import cached_images
from braintumor.data.splits import in_splits
from braintumor.data.validate import validate_dataset
from braintumor.errors import BrainTumorError, ConfigError
from braintumor.model.network import Inference, build_model, keep_frozen_in_eval, load_model, save_model, set_frozen
from braintumor.model.transforms import Preprocessing, mixup
from braintumor.scans.limits import ImageLimits
from braintumor.scans.preprocess import ScanPrep
from braintumor.training.checkpoint import load_checkpoint
from braintumor.training.ema import WeightEMA
from braintumor.training.loop import Step, TrainData, build_optimizer, fit, lr_lambda, train_one_epoch


@pytest.fixture(scope="module")
def tiny_data(sample_root, tmp_path_factory) -> TrainData:
    params = tiny_params(sample_root)
    frame = validate_dataset(sample_root, params.data, workers=1, progress=False).manifest
    rows = in_splits(frame, "train", "val")
    images = cached_images(
        rows,
        sample_root,
        Preprocessing.from_config(params.model, params.preprocess).scan,
        tmp_path_factory.mktemp("cache"),
        limits=ImageLimits.of(params.data),
        workers=1,
        progress=False,
    )
    labels = rows["label"].map({c: i for i, c in enumerate(params.data.classes)}).to_numpy()
    is_val = (rows["split"] == "val").to_numpy()
    return TrainData(images[~is_val], labels[~is_val], images[is_val], labels[is_val], params.data.classes)


def _fit(data, params, checkpoint, **kwargs):
    torch.manual_seed(0)  # the same initial weights for every call
    model = build_model("none", len(data.classes))
    return fit(
        model,
        data,
        params.train,
        params.augment,
        Preprocessing.from_config(params.model, params.preprocess),
        checkpoint_path=checkpoint,
        progress=False,
        **kwargs,
    )


def _curves(result) -> list[tuple]:
    return [(s.train_loss, s.train_accuracy, s.val_loss, s.val_accuracy, s.val_macro_f1, s.lr) for s in result.history]


class KilledAfterEpoch(Exception):
    pass


class KillAfter:
    """An EpochLogger that 'kills' training right after the checkpoint of epoch `n` is written."""

    def __init__(self, n: int) -> None:
        self.n = n

    def log_epoch(self, stats) -> None:
        if stats.epoch == self.n:
            raise KilledAfterEpoch


@pytest.mark.trains
def test_interrupted_then_resumed_run_ends_with_the_same_metrics(tiny_data, sample_root, tmp_path):
    params = tiny_params(sample_root, train={"epochs": 3, "deterministic": True})
    straight = _fit(tiny_data, params, tmp_path / "straight.pt")

    with pytest.raises(KilledAfterEpoch):
        _fit(tiny_data, params, tmp_path / "resumed.pt", logger=KillAfter(2))
    assert load_checkpoint(tmp_path / "resumed.pt")["epoch"] == 2
    resumed = _fit(tiny_data, params, tmp_path / "resumed.pt")

    assert len(resumed.history) == 3
    assert _curves(resumed) == _curves(straight)
    for key, value in straight.best_state.items():
        assert torch.equal(value, resumed.best_state[key]), key


class Recorder:
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def log_epoch(self, stats) -> None:
        self.epochs.append(stats.epoch)


@pytest.mark.trains
def test_a_kill_between_checkpoint_and_log_replays_the_checkpointed_epochs_to_the_logger(
    tiny_data, sample_root, tmp_path
):
    params = tiny_params(sample_root, train={"epochs": 3})
    with pytest.raises(KilledAfterEpoch):  # epoch 2 is checkpointed, never logged
        _fit(tiny_data, params, tmp_path / "c.pt", logger=KillAfter(2))
    recorder = Recorder()
    _fit(tiny_data, params, tmp_path / "c.pt", logger=recorder)
    assert recorder.epochs == [1, 2, 3]  # the logger keeps what it already has (RunTracker does)


@pytest.mark.trains
def test_two_runs_with_the_same_params_give_the_same_metrics(tiny_data, sample_root, tmp_path):
    params = tiny_params(sample_root, train={"epochs": 2, "deterministic": True})
    first = _fit(tiny_data, params, tmp_path / "a.pt")
    second = _fit(tiny_data, params, tmp_path / "b.pt")
    assert _curves(first) == _curves(second)


@pytest.mark.trains
def test_a_finished_checkpoint_is_not_trained_again(tiny_data, sample_root, tmp_path):
    params = tiny_params(sample_root, train={"epochs": 1})
    _fit(tiny_data, params, tmp_path / "c.pt")
    again = _fit(tiny_data, params, tmp_path / "c.pt")  # resumes after the last epoch: nothing left to do
    assert len(again.history) == 1


@pytest.mark.trains
def test_non_finite_loss_stops_with_epoch_and_batch_and_keeps_the_last_good_checkpoint(
    tiny_data, sample_root, tmp_path
):
    params = tiny_params(sample_root, train={"epochs": 3})
    torch.manual_seed(0)
    model = build_model("none", len(tiny_data.classes))
    calls = {"n": 0}
    batches_per_epoch = len(tiny_data.train_labels) // params.train.batch_size

    def poison(module, _inputs, output):  # the first training batch of epoch 2 produces NaN logits
        if not module.training:
            return output
        calls["n"] += 1
        return output * float("nan") if calls["n"] == batches_per_epoch + 1 else output

    model.fc.register_forward_hook(poison)
    checkpoint = tmp_path / "nan.pt"
    with pytest.raises(BrainTumorError, match=r"epoch 2, batch 1"):
        fit(
            model,
            tiny_data,
            params.train,
            params.augment,
            Preprocessing.from_config(params.model, params.preprocess),
            checkpoint_path=checkpoint,
            progress=False,
        )
    good = load_checkpoint(checkpoint)
    assert good["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())


@pytest.mark.trains
def test_head_only_epochs_leave_the_backbone_untouched_then_unfreeze(tiny_data, sample_root, tmp_path):
    params = tiny_params(sample_root, train={"epochs": 2, "head_only_epochs": 1})
    torch.manual_seed(0)
    model = build_model("none", len(tiny_data.classes))
    start = model.layer3[0].conv1.weight.detach().clone()
    seen = {}

    class Snapshot:
        def log_epoch(self, stats):
            seen[stats.epoch] = model.layer3[0].conv1.weight.detach().clone()

    fit(
        model,
        tiny_data,
        params.train,
        params.augment,
        Preprocessing.from_config(params.model, params.preprocess),
        checkpoint_path=tmp_path / "h.pt",
        logger=Snapshot(),
        progress=False,
    )
    assert torch.equal(seen[1], start)
    assert not torch.equal(seen[2], start)


@pytest.mark.trains
def test_freeze_up_to_a_named_stage():
    model = build_model("none", 4)
    set_frozen(model, "layer2")
    assert not model.conv1.weight.requires_grad and not model.bn1.weight.requires_grad
    assert not any(p.requires_grad for p in model.layer1.parameters())
    assert not any(p.requires_grad for p in model.layer2.parameters())
    assert all(p.requires_grad for p in model.layer3.parameters())
    assert all(p.requires_grad for p in model.fc.parameters())
    model.train()
    keep_frozen_in_eval(model)
    assert not model.layer2[0].bn1.training and model.layer3[0].bn1.training

    set_frozen(model, "backbone")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.1.weight", "fc.1.bias"}
    set_frozen(model, "none")
    assert all(p.requires_grad for p in model.parameters())


def test_no_weight_decay_on_norm_and_bias_parameters(sample_root):
    params = tiny_params(sample_root, train={"optimizer": "sgd", "weight_decay": 0.01, "nesterov": True})
    model = build_model("none", 4)
    optimizer = build_optimizer(model, params.train)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert any(p is model.bn1.weight for p in no_decay["params"])
    assert decay["nesterov"] and decay["momentum"] == 0.9


def test_learning_rate_schedules_step_per_batch(sample_root):
    step = lr_lambda(
        tiny_params(
            sample_root, train={"scheduler": "step", "step_size": 7, "gamma": 0.1, "warmup_epochs": 0, "epochs": 20}
        ).train,
        steps_per_epoch=10,
    )
    # Step decays at epoch boundaries: after 7 epochs (70 steps) and 14 epochs (140 steps).
    assert [step(s) for s in (0, 69, 70, 139, 140)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    cosine = lr_lambda(
        tiny_params(sample_root, train={"scheduler": "cosine", "warmup_epochs": 2, "epochs": 10}).train,
        steps_per_epoch=10,
    )
    # Linear warmup over 2 epochs (20 steps), step by step; then cosine over the 8 epochs left, to zero.
    assert cosine(0) == pytest.approx(1 / 21) and cosine(9) == pytest.approx(10 / 21)
    assert cosine(19) == pytest.approx(20 / 21)
    assert cosine(20) == pytest.approx(1.0) and cosine(60) == pytest.approx(0.5)
    assert cosine(99) < 0.001 and cosine(100) == pytest.approx(0.0)
    values = [cosine(s) for s in range(20, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # decays smoothly within epochs, never jumps up


def test_imagenet_weights_offline_fail_clearly_and_never_fall_back(monkeypatch):
    from torchvision.models import ResNet50_Weights

    def offline(*_args, **_kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(ResNet50_Weights.IMAGENET1K_V2.__class__, "get_state_dict", offline)
    with pytest.raises(BrainTumorError) as info:
        build_model("imagenet", 4)
    message = str(info.value)
    assert "checkpoints" in message and "model.weights" in message and "none" in message


def test_local_weights_file_is_loaded_and_its_head_dropped(tmp_path):
    from torchvision.models import resnet50

    source = resnet50(weights=None)
    torch.save(source.state_dict(), tmp_path / "backbone.pth")
    model = build_model(str(tmp_path / "backbone.pth"), 4)
    assert torch.equal(model.layer4[2].conv3.weight, source.layer4[2].conv3.weight)
    assert model.fc[1].out_features == 4

    with pytest.raises(ConfigError, match="no such file"):
        build_model(str(tmp_path / "missing.pth"), 4)
    torch.save({"not": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="not a ResNet50 state dict"):
        build_model(str(tmp_path / "other.pth"), 4)


def test_model_file_round_trip_rebuilds_the_same_network(tmp_path):
    torch.manual_seed(0)
    model = build_model("none", 4, dropout=0.3).eval()
    prep = Preprocessing(scan=ScanPrep(size=40, head_crop=True, intensity="equalize"), image_size=32)
    save_model(
        tmp_path / "model.pt",
        model,
        classes=["a", "b", "c", "d"],
        preprocessing=prep,
        inference=Inference(temperature=1.7, tta_hflip=True),
        params={"x": 1},
        metrics={"best_epoch": 1},
    )
    loaded, bundle = load_model(tmp_path / "model.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x))
    assert bundle["classes"] == ["a", "b", "c", "d"]
    assert Preprocessing.from_dict(bundle["preprocessing"]) == prep
    assert Inference.from_dict(bundle["inference"]) == Inference(temperature=1.7, tta_hflip=True)
    assert not list(tmp_path.glob(".model.pt.*"))  # no temporary file left behind

    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(BrainTumorError, match="not a model file"):
        load_model(tmp_path / "junk.pt")
    with pytest.raises(BrainTumorError, match="dvc repro train"):
        load_model(tmp_path / "absent.pt")


def test_training_reads_no_test_rows(sample_root):
    """Model selection uses val only: the Testing images never enter TrainData."""
    params = tiny_params(sample_root)
    frame = validate_dataset(sample_root, params.data, workers=1, progress=False).manifest
    selected = in_splits(frame, "train", "val")
    assert not selected["path"].str.startswith("Testing/").any()
    assert set(selected["split"]) == {"train", "val"}
    assert np.isin(in_splits(frame, "test")["path"], selected["path"]).sum() == 0


def test_one_macro_f1_for_val_and_testing_averages_the_classes_present():
    from sklearn.metrics import f1_score

    from braintumor.evaluation import metrics as evaluation
    from braintumor.evaluation.scores import macro_f1
    from braintumor.training import loop as training

    assert training.macro_f1 is macro_f1  # the training core's val figure is evaluation's Testing figure
    rng = np.random.default_rng(0)
    for _ in range(20):
        y_true, y_pred = rng.integers(0, 3, 30), rng.integers(0, 4, 30)  # class 3 absent, but predicted
        expected = f1_score(y_true, y_pred, average="macro", labels=np.unique(y_true), zero_division=0)
        assert macro_f1(y_true, y_pred, 4) == pytest.approx(expected)
        probs = np.eye(4)[y_pred] * 0.9 + 0.025
        assert evaluation.classification_metrics(y_true, probs, list("abcd")).macro_f1 == pytest.approx(expected)
    # all classes present: the plain macro average
    y_true, y_pred = np.array([0, 1, 2, 3, 0]), np.array([0, 1, 2, 0, 0])
    assert macro_f1(y_true, y_pred, 4) == pytest.approx(f1_score(y_true, y_pred, average="macro"))


def test_training_core_imports_with_only_torch_and_torchvision():
    import subprocess
    import sys

    blocked = "import sys\nfor m in ['sklearn', 'pandas', 'yaml', 'tqdm', 'mlflow', 'dvc']: sys.modules[m] = None\n"
    code = blocked + "import braintumor.training, braintumor.data.sample, braintumor.model\nprint('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"


@pytest.mark.trains
def test_early_stopping_after_patience_epochs_without_a_better_val_macro_f1(tiny_data, sample_root, tmp_path):
    # Frozen backbone (BatchNorm statistics frozen too) and a vanishing lr: predictions never change, so val
    # macro-F1 never improves after epoch 1 and training stops after 1 + patience epochs.
    params = tiny_params(sample_root, train={"epochs": 6, "patience": 2, "freeze": "backbone", "lr": 1e-12})
    result = _fit(tiny_data, params, tmp_path / "p.pt")
    assert result.stopped_early
    assert [s.epoch for s in result.history] == [1, 2, 3]
    assert result.best_epoch == 1 and result.summary()["stopped_early"] is True


def test_ema_average_follows_the_weights_with_its_decay():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = WeightEMA(model, decay=0.9)
    start = {k: v.clone() for k, v in ema.model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update()  # first update: warmup decay min(0.9, 2/11)
    decay = 2 / 11
    expected = start["0.weight"] + (1 - decay) * (model[0].weight - start["0.weight"])
    assert torch.allclose(ema.model[0].weight, expected)
    assert int(ema.model[1].num_batches_tracked) == 7  # integer buffers are copied, not averaged
    for _ in range(200):
        ema.update()
    assert torch.allclose(ema.model[0].weight, model[0].weight, atol=1e-6)  # converges to constant weights
    assert not ema.model[0].weight.requires_grad


@pytest.mark.trains
def test_with_ema_the_selected_weights_are_the_average_and_resume_is_exact(tiny_data, sample_root, tmp_path):
    params = tiny_params(sample_root, train={"epochs": 3, "deterministic": True, "ema_decay": 0.9})
    straight = _fit(tiny_data, params, tmp_path / "straight.pt")
    with pytest.raises(KilledAfterEpoch):
        _fit(tiny_data, params, tmp_path / "resumed.pt", logger=KillAfter(2))
    assert load_checkpoint(tmp_path / "resumed.pt")["ema"]["updates"] > 0
    resumed = _fit(tiny_data, params, tmp_path / "resumed.pt")
    assert _curves(resumed) == _curves(straight)
    for key, value in straight.best_state.items():
        assert torch.equal(value, resumed.best_state[key]), key

    plain = _fit(tiny_data, tiny_params(sample_root, train={"epochs": 3, "deterministic": True}), tmp_path / "p.pt")
    assert _curves(plain)[0][:2] == _curves(straight)[0][:2]  # the same training steps ...
    assert _curves(plain) != _curves(straight)  # ... but validation and selection see the average


@pytest.mark.trains
def test_weight_average_over_the_last_epochs_is_saved_with_its_own_batch_norm_and_resumes_exactly(
    tiny_data, sample_root, tmp_path
):
    params = tiny_params(sample_root, train={"epochs": 3, "deterministic": True, "swa_epochs": 2})
    straight = _fit(tiny_data, params, tmp_path / "straight.pt")
    plain = _fit(tiny_data, tiny_params(sample_root, train={"epochs": 3, "deterministic": True}), tmp_path / "p.pt")
    assert _curves(straight) == _curves(plain)  # averaging never changes the training steps
    for key, value in plain.best_state.items():
        assert torch.equal(value, straight.best_state[key]), key

    average = straight.average
    steps_per_epoch = len(tiny_data.train_labels) // params.train.batch_size
    assert average.steps == 2 * steps_per_epoch and average.epochs == 2
    assert straight.final_state is average.state
    assert 0.0 <= average.val_accuracy <= 1.0 and 0.0 <= average.val_macro_f1 <= 1.0
    summary = straight.summary()
    assert summary["swa_val_macro_f1"] == average.val_macro_f1 and summary["swa_steps"] == average.steps
    # Its own batch-norm statistics, refitted on the train scans: not the last step's, not the initial ones.
    last = load_checkpoint(tmp_path / "p.pt")["model"]
    assert not torch.equal(average.state["bn1.running_mean"], last["bn1.running_mean"])
    assert not torch.equal(average.state["bn1.running_mean"], torch.zeros_like(last["bn1.running_mean"]))
    assert any(not torch.equal(average.state[k], last[k]) for k in last if k.endswith(".weight"))

    with pytest.raises(KilledAfterEpoch):  # killed inside the averaged epochs
        _fit(tiny_data, params, tmp_path / "resumed.pt", logger=KillAfter(2))
    assert int(load_checkpoint(tmp_path / "resumed.pt")["swa"]["n_averaged"]) == steps_per_epoch
    resumed = _fit(tiny_data, params, tmp_path / "resumed.pt")
    for key, value in average.state.items():
        assert torch.equal(value, resumed.average.state[key]), key


@pytest.mark.trains
def test_a_checkpoint_from_before_weight_averaging_still_resumes(tiny_data, sample_root, tmp_path, capsys):
    params = tiny_params(sample_root, train={"epochs": 2})
    with pytest.raises(KilledAfterEpoch):
        _fit(tiny_data, params, tmp_path / "c.pt", logger=KillAfter(1))
    old = torch.load(tmp_path / "c.pt", weights_only=True)
    del old["swa"]  # the previous version wrote no such key
    torch.save(old, tmp_path / "c.pt")
    capsys.readouterr()
    recorder = Recorder()
    _fit(tiny_data, params, tmp_path / "c.pt", logger=recorder)
    assert "resuming from" in capsys.readouterr().out
    assert recorder.epochs == [1, 2]  # epoch 1 replayed from the checkpoint, only epoch 2 trained


def test_weight_average_needs_its_epochs_and_no_early_stopping(sample_root):
    with pytest.raises(ConfigError, match="train.swa_epochs"):
        tiny_params(sample_root, train={"epochs": 3, "swa_epochs": 4})
    with pytest.raises(ConfigError, match="train.swa_epochs.*patience"):
        tiny_params(sample_root, train={"epochs": 3, "swa_epochs": 2, "patience": 1})


def test_cpu_bf16_auto_follows_the_cpu_flags(tmp_path, monkeypatch):
    from braintumor import runtime

    amx, plain = tmp_path / "amx", tmp_path / "plain"
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n")
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    assert runtime.cpu_has_fast_bf16(str(amx)) and not runtime.cpu_has_fast_bf16(str(plain))
    assert not runtime.cpu_has_fast_bf16(str(tmp_path / "missing"))  # not Linux: fp32, never wrong
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)
    assert runtime.autocast_dtype(cpu, amp=True, cpu_bf16="auto") is torch.bfloat16
    assert runtime.autocast_dtype(cpu, amp=True, cpu_bf16=False) is None
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: False)
    assert runtime.autocast_dtype(cpu, amp=True, cpu_bf16="auto") is None
    assert runtime.autocast_dtype(cpu, amp=True, cpu_bf16=True) is torch.bfloat16
    assert runtime.precision_name(torch.bfloat16) == "bf16" and runtime.precision_name(None) == "fp32"


@pytest.mark.trains
def test_training_reports_the_precision_it_ran_in(tiny_data, sample_root, tmp_path):
    result = _fit(tiny_data, tiny_params(sample_root, train={"cpu_bf16": True}), tmp_path / "bf16.pt")
    assert result.precision == "bf16"
    result = _fit(tiny_data, tiny_params(sample_root, train={"cpu_bf16": False}), tmp_path / "fp32.pt")
    assert result.precision == "fp32"


class Epochs:
    """An EpochLogger that records which epochs were trained."""

    def __init__(self) -> None:
        self.trained: list[int] = []

    def log_epoch(self, stats) -> None:
        self.trained.append(stats.epoch)


@pytest.mark.trains
def test_a_readable_checkpoint_that_cannot_be_resumed_starts_over_with_a_warning(
    tiny_data, sample_root, tmp_path, caplog
):
    params = tiny_params(sample_root, train={"epochs": 1, "deterministic": True})
    straight = _fit(tiny_data, params, tmp_path / "straight.pt")  # leaves its checkpoint after epoch 1
    damages = {
        "it lacks scheduler, since_best": lambda ckpt: (ckpt.pop("scheduler"), ckpt.pop("since_best")),  # older
        "its weights do not fit this network": lambda ckpt: ckpt["model"].update({"fc.weight": torch.zeros(7, 2048)}),
        "an_unknown_column": lambda ckpt: ckpt["history"][0].update({"an_unknown_column": 1.0}),  # another version
    }
    for reason, damage in damages.items():
        ckpt = torch.load(tmp_path / "straight.pt", weights_only=True)
        damage(ckpt)
        torch.save(ckpt, tmp_path / "damaged.pt")
        epochs = Epochs()
        caplog.clear()
        with caplog.at_level("WARNING"):
            again = _fit(tiny_data, params, tmp_path / "damaged.pt", logger=epochs)
        assert reason in caplog.text and "training starts from epoch 1" in caplog.text
        assert epochs.trained == [1]  # trained afresh (resuming the finished checkpoint would train nothing)
        assert _curves(again) == _curves(straight)


def test_mixup_blends_each_scan_with_a_partner_by_one_beta_weight():
    images = torch.rand(8, 3, 6, 6)
    mixed, partner, lam = mixup(images, 0.4, torch.Generator().manual_seed(3))
    assert 0.0 < lam < 1.0
    assert sorted(partner.tolist()) == list(range(8))  # a permutation of the batch
    assert torch.allclose(mixed, lam * images + (1 - lam) * images[partner])
    again, partner_again, lam_again = mixup(images, 0.4, torch.Generator().manual_seed(3))  # the generator's draws
    assert lam_again == lam and torch.equal(partner_again, partner) and torch.equal(again, mixed)
    lams = [mixup(images, 0.4, torch.Generator().manual_seed(seed))[2] for seed in range(200)]
    assert 0.4 < float(np.mean(lams)) < 0.6 and min(lams) < 0.1 and max(lams) > 0.9  # Beta(0.4, 0.4): U-shaped


@pytest.mark.trains
def test_with_mixup_the_loss_weighs_both_labels_of_each_blend():
    """train.mixup > 0: the step's loss is lam * CE(label) + (1 - lam) * CE(partner's label), on the mixed scans."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
    nn.init.normal_(net[1].weight, std=0.5)  # confident logits: the mixed and the plain loss differ clearly
    images, targets = torch.rand(6, 3, 6, 6), torch.tensor([0, 1, 2, 3, 0, 1])
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)  # the loss of the weights as they are
    step = Step(
        optimizer,
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
        torch.amp.GradScaler("cpu", enabled=False),
        None,
        None,
        None,
        0.0,
        label_smoothing=0.1,
        mixup=0.4,
    )
    loss, _, seen, _ = train_one_epoch(
        net,
        net,
        [(torch.zeros(6, 1, 6, 6, dtype=torch.uint8), targets)],
        lambda _: images,
        step,
        torch.device("cpu"),
        1,
        torch.contiguous_format,
        torch.Generator().manual_seed(4),
    )
    mixed, partner, lam = mixup(images, 0.4, torch.Generator().manual_seed(4))
    assert 0.3 < lam < 0.7  # a real blend (at lam 0 or 1 the mixed loss is the plain one, permuted)
    with torch.no_grad():
        logits = net(mixed)
    expected = lam * nn.functional.cross_entropy(logits, targets, label_smoothing=0.1) + (
        1 - lam
    ) * nn.functional.cross_entropy(logits, targets[partner], label_smoothing=0.1)
    plain = nn.functional.cross_entropy(net(images), targets, label_smoothing=0.1)
    assert seen == 6 and loss == pytest.approx(float(expected), rel=1e-5)
    assert abs(loss - float(plain)) > 1e-3  # the mixed loss, not the plain one
