"""Test-set metrics (braintumor.evaluation.metrics) against small cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from braintumor.evaluation.metrics import (
    classification_metrics,
    expected_calibration_error,
    reliability_table,
    roc_auc_ovr,
    roc_table,
)
from braintumor.evaluation.results import HEADLINE, Evaluation, SetScores

CLASSES = ["a", "b", "c"]

# Five scans, three classes; class c is never predicted.
#   row  y_true  probs (a, b, c)      argmax  confidence  correct  p(true class)
#   0    a       0.70  0.20  0.10     a       0.70        yes      0.70
#   1    a       0.20  0.45  0.35     b       0.45        no       0.20
#   2    b       0.10  0.80  0.10     b       0.80        yes      0.80
#   3    b       0.30  0.60  0.10     b       0.60        yes      0.60
#   4    c       0.55  0.15  0.30     a       0.55        no       0.30
Y_TRUE = np.array([0, 0, 1, 1, 2])
PROBS = np.array([[0.70, 0.20, 0.10], [0.20, 0.45, 0.35], [0.10, 0.80, 0.10], [0.30, 0.60, 0.10], [0.55, 0.15, 0.30]])


@pytest.fixture(scope="module")
def metrics() -> SetScores:
    return classification_metrics(Y_TRUE, PROBS, CLASSES, bins=4)


def test_headline_metrics_match_hand_computation(metrics):
    assert metrics.n == 5
    # 3 of 5 argmax predictions are right (rows 0, 2, 3).
    assert metrics.accuracy == pytest.approx(0.6)
    # Per-class F1 (see the per-class test): a 0.5, b 0.8, c 0.0.
    # macro = (0.5 + 0.8 + 0) / 3; weighted by support (2, 2, 1) = (2*0.5 + 2*0.8 + 1*0) / 5 = 0.52.
    assert metrics.macro_f1 == pytest.approx(1.3 / 3)
    assert metrics.weighted_f1 == pytest.approx(0.52)
    # Log loss = -mean(log p(true class)) = -(ln .7 + ln .2 + ln .8 + ln .6 + ln .3) / 5.
    expected_log_loss = -(math.log(0.7) + math.log(0.2) + math.log(0.8) + math.log(0.6) + math.log(0.3)) / 5
    assert metrics.log_loss == pytest.approx(expected_log_loss)
    assert metrics.log_loss == pytest.approx(0.780811, abs=1e-6)
    # ECE with 4 bins (0-.25, .25-.5, .5-.75, .75-1):
    #   (.25,.5]: {0.45 wrong}             -> |0 - 0.45|            = 0.45, weight 1/5
    #   (.5,.75]: {0.70 ok, 0.60 ok, 0.55 wrong} -> |2/3 - 1.85/3| = 0.05, weight 3/5
    #   (.75,1]:  {0.80 ok}                -> |1 - 0.8|             = 0.20, weight 1/5
    #   ECE = (0.45 + 3*0.05 + 0.2) / 5 = 0.16
    assert metrics.ece == pytest.approx(0.16)
    # One-vs-rest AUC = share of (positive, negative) pairs ranked right, ties count one half.
    #   a: positives (.70, .20) vs negatives (.10, .30, .55): .70 beats 3, .20 beats 1 -> 4/6
    #   b: positives (.80, .60) vs negatives (.20, .45, .15): 6/6 = 1
    #   c: positive .30 vs negatives (.10, .35, .10, .10): beats 3 of 4 -> 0.75
    assert metrics.roc_auc_ovr == pytest.approx((4 / 6 + 1 + 0.75) / 3)
    assert all(getattr(metrics, name) is not None for name in HEADLINE)


def test_per_class_scores_match_hand_computation(metrics):
    per_class = {name: vars(scores) for name, scores in metrics.per_class.items()}
    assert list(per_class) == CLASSES
    # a: predicted for rows 0 (right) and 4 (wrong); actual rows 0, 1 -> TP 1, FP 1, FN 1.
    assert per_class["a"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    # b: predicted for rows 1 (wrong), 2, 3 (right); actual rows 2, 3 -> TP 2, FP 1, FN 0.
    #    precision 2/3, recall 1, F1 = 2 * (2/3) / (2/3 + 1) = 0.8.
    assert per_class["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    # c: never predicted (0 of 0 predictions right: precision reported as 0, not an error); actual row 4 missed.
    assert per_class["c"] == pytest.approx({"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1})
    assert all(isinstance(v["support"], int) for v in per_class.values())


def test_a_class_absent_from_y_true_is_left_out_of_roc_auc_and_does_not_crash():
    # Class c never occurs in y_true but is predicted once (row 3).
    #   a: positives (.6, .3) vs negatives (.2, .1): 4/4 = 1.0
    #   b: positives (.7, .2) vs negatives (.3, .4): .7 beats 2, .2 beats 0 -> 2/4 = 0.5
    #   c: no positives: no AUC; the average is over a and b only -> 0.75
    y_true = np.array([0, 1, 0, 1])
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.4, 0.3], [0.1, 0.2, 0.7]])
    result = classification_metrics(y_true, probs, CLASSES)
    assert result.roc_auc_ovr == pytest.approx(0.75)
    assert result.accuracy == pytest.approx(0.5)
    assert result.per_class["c"].support == 0
    assert result.per_class["c"].precision == 0.0  # predicted once, wrongly
    # Log loss over the known classes, even though c has no example: -(ln .6 + ln .7 + ln .3 + ln .2) / 4.
    assert result.log_loss == pytest.approx(-(math.log(0.6) + math.log(0.7) + math.log(0.3) + math.log(0.2)) / 4)


def test_a_zero_probability_on_the_true_class_gives_a_large_but_finite_log_loss():
    # Row 0 puts all its mass on b while the scan is a: -ln(0) is infinite, so the probability is clipped; the
    # metric stays a number MLflow can log. Row 1 is right with certainty (loss 0).
    probs = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    result = classification_metrics(np.array([0, 1]), probs, CLASSES)
    assert math.isfinite(result.log_loss)
    assert result.log_loss > 10  # at least -ln(1e-8) / 2


def test_float32_softmax_output_is_accepted_without_warnings(recwarn):
    # What the model's softmax gives: float32 rows that sum to 1 only to float32 precision.
    probs = np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [1 / 3, 1 / 3, 1 / 3]], dtype=np.float32)
    result = classification_metrics(np.array([1, 0, 2]), probs, CLASSES)
    assert result.log_loss == pytest.approx(-(math.log(0.7) + math.log(0.6) + math.log(1 / 3)) / 3, rel=1e-5)
    assert [str(w.message) for w in recwarn] == []


@pytest.mark.parametrize("y_true", [np.array([1, 1, 1]), np.array([2])])
def test_roc_auc_is_none_when_fewer_than_two_classes_are_present(y_true):
    probs = np.tile([0.2, 0.5, 0.3], (len(y_true), 1))
    assert roc_auc_ovr(y_true, probs) is None
    result = classification_metrics(y_true, probs, CLASSES)  # e.g. a tiny leak-free subset
    assert result.roc_auc_ovr is None
    assert result.n == len(y_true)
    assert result.accuracy == pytest.approx(float(y_true[0] == 1))
    assert math.isfinite(result.log_loss)


def test_roc_auc_with_two_classes_present_out_of_three():
    # a: positive .9 vs negatives (.4, .1) -> 1;  b: positives (.6, .2) vs negative .05 -> 1
    y_true = np.array([0, 1, 1])
    probs = np.array([[0.9, 0.05, 0.05], [0.4, 0.6, 0.0], [0.1, 0.2, 0.7]])
    assert roc_auc_ovr(y_true, probs) == pytest.approx(1.0)


def test_expected_calibration_error_hand_case():
    # Ten scans, every one predicted with confidence 0.8, six of them right: accuracy 0.6 in the only filled bin,
    # so ECE = |0.6 - 0.8| = 0.2.
    probs = np.tile([0.8, 0.2], (10, 1))
    y_true = np.array([0] * 6 + [1] * 4)
    assert expected_calibration_error(y_true, probs) == pytest.approx(0.2)
    assert expected_calibration_error(y_true, probs, bins=10) == pytest.approx(0.2)


def test_expected_calibration_error_weights_bins_by_their_share():
    # 3 scans at confidence 0.9, all right (gap 0.1); 1 scan at 0.6, wrong (gap 0.6).
    # ECE = 3/4 * 0.1 + 1/4 * 0.6 = 0.225
    probs = np.array([[0.9, 0.1]] * 3 + [[0.6, 0.4]])
    y_true = np.array([0, 0, 0, 1])
    assert expected_calibration_error(y_true, probs, bins=10) == pytest.approx(0.225)


def test_perfectly_calibrated_predictions_have_zero_ece():
    # Confidence 1.0 and always right.
    probs = np.eye(3)[[0, 1, 2, 1]]
    assert expected_calibration_error(np.array([0, 1, 2, 1]), probs) == pytest.approx(0.0)


def test_reliability_table_bins_and_counts():
    table = reliability_table(Y_TRUE, PROBS, bins=4)
    assert list(table.columns) == ["bin_lower", "bin_upper", "count", "confidence", "accuracy"]
    assert table["bin_lower"].tolist() == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert table["bin_upper"].tolist() == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # Confidences 0.70, 0.45, 0.80, 0.60, 0.55 -> bins 2, 1, 3, 2, 2.
    assert table["count"].tolist() == [0, 1, 3, 1]
    assert table["count"].sum() == len(Y_TRUE)
    assert np.isnan(table.loc[0, "confidence"]) and np.isnan(table.loc[0, "accuracy"])  # empty bin
    assert table.loc[1, "confidence"] == pytest.approx(0.45)
    assert table.loc[1, "accuracy"] == pytest.approx(0.0)
    assert table.loc[2, "confidence"] == pytest.approx((0.70 + 0.60 + 0.55) / 3)
    assert table.loc[2, "accuracy"] == pytest.approx(2 / 3)
    assert table.loc[3, "confidence"] == pytest.approx(0.8)
    assert table.loc[3, "accuracy"] == pytest.approx(1.0)


def test_reliability_table_puts_full_confidence_in_the_last_bin():
    table = reliability_table(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]]), bins=15)
    assert len(table) == 15
    assert table["count"].tolist() == [0] * 14 + [2]


def test_empty_input_gives_n_zero_and_no_figures():
    result = classification_metrics(np.array([], dtype=int), np.zeros((0, 3)), CLASSES)
    assert result.n == 0
    for key in HEADLINE:
        assert getattr(result, key) is None
    assert result.per_class == {}


def test_leak_free_subset_is_the_test_rows_without_any_copy_in_training():
    import pandas as pd

    from braintumor.evaluation.metrics import leak_free_mask

    test = pd.DataFrame(
        {
            "path": ["a", "b", "c", "d"],
            "exact_in_train": [False, True, False, True],
            "near_in_train": [False, False, True, False],
        }
    )
    assert leak_free_mask(test).tolist() == [True, False, False, False]
    # as read back from the manifest CSV, the flags may be strings
    as_read = test.assign(exact_in_train=["False", "True", "False", "True"])
    assert leak_free_mask(as_read.assign(exact_in_train=as_read["exact_in_train"] == "True")).tolist() == [
        True,
        False,
        False,
        False,
    ]


def test_roc_table_is_long_form_one_curve_per_class_present():
    table = roc_table(Y_TRUE, PROBS, CLASSES, points=5)  # fpr grid 0, 0.25, 0.5, 0.75, 1
    assert list(table.columns) == ["class", "fpr", "tpr"]
    assert list(table["class"].unique()) == CLASSES and len(table) == 3 * 5
    curve = {c: part.set_index("fpr")["tpr"] for c, part in table.groupby("class")}
    # class a vs rest: positives score 0.70, 0.20; negatives 0.55, 0.30, 0.10 -> TPR 0.5 until FPR 2/3.
    assert curve["a"][0.5] == pytest.approx(0.5) and curve["a"][1.0] == pytest.approx(1.0)
    # class c vs rest: its one positive (0.30) is beaten only by one negative (0.35) -> TPR 1 from FPR 0.25.
    assert curve["c"][0.25] == pytest.approx(1.0) and curve["c"][0.5] == pytest.approx(1.0)
    without_c = roc_table(np.array([0, 0, 1, 1]), PROBS[:4], CLASSES, points=5)
    assert set(without_c["class"]) == {"a", "b"}


def test_dvc_draws_one_roc_line_per_class_of_a_changed_class_list_without_editing_dvc_yaml(tmp_path):
    """data.classes changed to three other names: dvc.yaml is the project's, byte for byte, and `dvc plots show`
    draws the ROC of each new class (the template colours by the `class` column)."""
    import json
    import shutil

    import yaml
    from helpers import BIN, REPO, run

    for name in ("dvc.yaml", ".dvc/config", ".dvc/plots/roc_per_class.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tmp_path / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    classes = ["astrocytoma", "ependymoma", "healthy"]
    params["data"].update(classes=classes, aliases={})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run(["git", "init", "-q"], cwd=tmp_path)
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 60)
    probs = rng.dirichlet([1, 1, 1], 60)
    (tmp_path / "plots/eval").mkdir(parents=True)
    roc_table(y_true, probs, classes).to_csv(tmp_path / "plots/eval/roc.csv", index=False)

    shown = json.loads(run([str(BIN / "dvc"), "plots", "show", "--json"], cwd=tmp_path).stdout)
    assert not [e for e in shown.get("errors") or [] if e["name"].startswith("ROC")]
    (plot,) = shown["data"]["ROC (one class vs rest)"]
    spec = plot["content"]
    assert spec["encoding"]["color"]["field"] == "class" and spec["mark"]["type"] == "line"
    values = spec["data"]["values"]
    assert sorted({v["class"] for v in values}) == classes
    assert {v["field"] for v in values} == {"tpr"} and len(values) == 3 * 101
    assert (tmp_path / "dvc.yaml").read_bytes() == (REPO / "dvc.yaml").read_bytes()


def test_macro_f1_averages_the_classes_present_only():
    """A subset without a class (the public set's leak-free Testing scans hold no no_tumor scan) is not marked down
    by a zero for it, even when some scans are wrongly called that class."""
    classes = ["a", "b", "c"]
    y_true = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1]])  # one a called c
    metrics = classification_metrics(y_true, probs, classes)
    f1_a, f1_b = 2 * 1.0 * 0.5 / 1.5, 2 * 1.0 * 1.0 / 2.0  # a: precision 1, recall 1/2; b: both 1
    assert vars(metrics.per_class["c"]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert metrics.macro_f1 == pytest.approx((f1_a + f1_b) / 2)


def test_mlflow_metrics_name_every_scalar_figure_once():
    evaluation = Evaluation.from_dict(
        {
            "n": 3,
            "accuracy": 0.5,
            "roc_auc_ovr": None,  # not computable: not logged
            "per_class": {"glioma_tumor": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 3}},
            "ece_uncalibrated": 0.2,
            "temperature": 1.5,
            "unlike_training": {"n_flagged": 1, "quantile": 0.99},
            "leak_free": {
                "n": 2,
                "unlike_training": {"n_flagged": 0},
                "by_image_size": {"seen": {"n": 2, "accuracy": 1.0, "per_class": {}}, "unseen": {"n": 0}},
            },
            "by_image_size": {"seen": {"n": 3, "macro_f1": 0.4}, "unseen": {"n": 0, "macro_f1": None}},
            "external": {
                "path": "data/external",
                "n": 9,
                "n_excluded": 1,
                "exact_in_train": 2,
                "near_in_train": 0,
                "copy_free": {"n": 7, "accuracy": 0.25},
            },
        }
    )
    testing, external = evaluation.mlflow_metrics()
    assert testing == {
        "test_n": 3.0,
        "test_accuracy": 0.5,
        "test_ece_uncalibrated": 0.2,
        "test_temperature": 1.5,
        "test_unlike_training_n_flagged": 1.0,
        "test_unlike_training_quantile": 0.99,
        "test_leak_free_n": 2.0,
        "test_leak_free_unlike_training_n_flagged": 0.0,
        "test_leak_free_size_seen_n": 2.0,
        "test_leak_free_size_seen_accuracy": 1.0,
        "test_leak_free_size_unseen_n": 0.0,
        "test_size_seen_n": 3.0,
        "test_size_seen_macro_f1": 0.4,
        "test_size_unseen_n": 0.0,
    }
    assert external == {  # the external set's under its own prefix; its path is no metric
        "external_n": 9.0,
        "external_n_excluded": 1.0,
        "external_exact_in_train": 2.0,
        "external_near_in_train": 0.0,
        "external_copy_free_n": 7.0,
        "external_copy_free_accuracy": 0.25,
    }
    assert Evaluation.from_dict({"n": 0, "leak_free": {"n": 0}}).mlflow_metrics()[1] == {}


def test_eval_json_reads_back_as_written():
    """eval.json's layout: what is absent stays absent (per-class figures of a part, the temperature of a side of
    the image-size split, the novelty figures of a model without the score), a figure that could not be computed is
    null."""
    side = {
        "n": 0,
        "accuracy": None,
        "macro_f1": None,
        "weighted_f1": None,
        "log_loss": None,
        "ece": None,
        "roc_auc_ovr": None,
        "per_class": {},
        "ece_uncalibrated": None,
    }
    whole = {
        **side,
        "n": 4,
        "accuracy": 0.75,
        "per_class": {"a": {"precision": 1.0, "recall": 0.5, "f1": 0.667, "support": 2}},
        "temperature": 1.2,
        "unlike_training": {
            "n_flagged": 1,
            "flagged_share": 0.25,
            "accuracy_flagged": 0.0,
            "accuracy_unflagged": 1.0,
            "error_auroc": None,
            "quantile": 0.95,
        },
        "by_image_size": {"seen": side, "unseen": side},
    }
    part = {k: v for k, v in whole.items() if k != "per_class"}
    written = {
        **whole,
        "leak_free": part,
        "external": {"path": "x", **whole, "n_excluded": 0, "exact_in_train": 1, "near_in_train": 0, "copy_free": part},
    }
    assert Evaluation.from_dict(written).to_dict() == written
    assert list(Evaluation.from_dict(written).to_dict()) == list(written)
    assert Evaluation.from_dict(written).testing.of_class("a").recall == 0.5


def test_the_predictor_scores_the_image_cache_as_it_scores_a_list(model_file, sample_root, tmp_path):
    """Evaluation hands the Predictor the decoded-image cache (a memory map); predict and the server a list."""
    import torch

    from braintumor.model.predictor import Predictor

    predictor = Predictor(model_file, batch_size=4)
    images = [predictor.load_image(path) for path in sorted((sample_root / "Testing").rglob("*.jpg"))[:6]]
    cache = np.lib.format.open_memmap(tmp_path / "cache.npy", mode="w+", dtype=np.uint8, shape=(6, *images[0].shape))
    cache[:] = np.stack(images)
    from_list, _ = predictor.outputs(images)
    from_cache, _ = predictor.outputs(cache)
    assert from_list.shape == (6, len(predictor.classes)) and torch.equal(from_list, from_cache)
    np.testing.assert_array_equal(predictor.probabilities(images), predictor.calibrated(from_list))
    empty, _ = predictor.outputs([])
    assert empty.shape == (0, len(predictor.classes))
