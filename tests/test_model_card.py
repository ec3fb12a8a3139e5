"""The model card and the registered version's description and tags are written from the run's numbers."""

from __future__ import annotations

import copy

import pytest

from braintumor.config import Params
from braintumor.evaluation import model_card
from braintumor.evaluation.results import HEADLINE, Evaluation

CLASSES = ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]


def _per_class(recalls: list[float], precisions: list[float], supports: list[int]) -> dict:
    return {
        c: {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "support": n}
        for c, r, p, n in zip(CLASSES, recalls, precisions, supports)
    }


def typed(facts: dict) -> dict:
    """The facts as the evaluate stage hands them over: the evaluation's figures as eval.json reads back."""
    return {**facts, "evaluation": Evaluation.from_dict(facts["evaluation"])}


def facts_like_the_public_dataset() -> dict:
    """The figures of the README's from-scratch run on the public dataset (glioma shift, leakage, poor calibration)."""
    evaluation = {
        "n": 394,
        "accuracy": 0.523,
        "macro_f1": 0.491,
        "weighted_f1": 0.47,
        "log_loss": 2.01,
        "ece": 0.227,
        "roc_auc_ovr": 0.80,
        "per_class": _per_class([0.13, 0.80, 0.95, 0.45], [0.70, 0.40, 0.50, 0.85], [100, 115, 105, 74]),
        "leak_free": {
            "n": 135,
            "accuracy": 0.237,
            "macro_f1": 0.214,
            "weighted_f1": 0.2,
            "log_loss": 4.12,
            "ece": 0.504,
            "roc_auc_ovr": 0.6,
        },
    }
    return {
        "run": {
            "run_id": "abc123",
            "experiment": "brain-tumor-mri",
            "registered_model": "brain-tumor-classifier",
            "model_version": "7",
            "model_id": "m-0123",
        },
        "classes": CLASSES,
        "params": Params().to_dict(),
        "preprocessing": {
            "scan": {
                "size": 128,
                "head_crop": True,
                "crop_threshold": 0.1,
                "crop_margin": 0.04,
                "intensity": "percentile",
                "percentiles": [1.0, 99.0],
            },
            "image_size": 112,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        },
        "validation": {
            "n_train_fit": 2440,
            "n_val": 430,
            "n_test": 394,
            "n_excluded": 0,
            "per_class": {s: {c: 10 for c in CLASSES} for s in ("train", "val", "test")},
            "test_exact_in_train": 88,
            "test_near_in_train": 171,
            "test_leak_free": 135,
            "exact_duplicates_in_train": 93,
            "label_conflicts": 2,
        },
        "training": {"best_epoch": 8, "best_val_accuracy": 0.747, "best_val_macro_f1": 0.755, "epochs_run": 8},
        "evaluation": evaluation,
        "tags": {
            "git_commit": "f" * 40,
            "git_dirty": "false",
            "data_dvc_hash": "Testing:aa.dir,Training:bb.dir",
            "device": "cpu",
        },
        "promotion": {
            "decision": "champion",
            "version": "7",
            "promotion_metric": "leak_free_macro_f1",
            "metric": "leak_free_macro_f1",
            "value": 0.214,
            "scans": 14,
            "compared_on": "Testing:abc.dir",
            "previous_champion_version": "6",
            "previous_champion_value": 0.2,
        },
    }


def test_card_has_every_section_and_the_leak_free_column():
    card = model_card.render(typed(facts_like_the_public_dataset()))
    assert card.startswith("# Model card: brain-tumor-classifier version 7")
    assert "Research use, not a diagnostic device" in card
    for section in (
        "## Model",
        "## Intended use",
        "## Data",
        "## Splits",
        "## Leakage found",
        "## Metrics",
        "## Calibration",
        "## Known failure modes",
    ):
        assert section in card, section
    assert "| metric | val (best epoch) | all Testing | leak-free Testing |" in card
    assert "| macro_f1 | 0.755 | 0.491 | 0.214 |" in card
    assert "| scans | 430 | 394 | 135 |" in card
    assert "88 of 394 Testing scans are byte-identical to a Training scan and 171 more are near copies" in card
    assert "259 leak, 135 are leak-free" in card
    assert (
        "Version 7 -> champion: leak_free_macro_f1 on 14 scans (Testing:abc.dir; evaluate.promotion_metric"
        " = leak_free_macro_f1): version 6 (champion) 0.200, version 7 0.214." in card
    )
    assert "Testing:aa.dir,Training:bb.dir" in card and "f" * 40 in card
    assert "## External data" not in card and "temperature" not in card


def test_with_a_weight_average_the_card_gives_the_saved_models_val_figures():
    facts = facts_like_the_public_dataset()
    facts["training"].update(swa_epochs=8, swa_val_accuracy=0.80, swa_val_macro_f1=0.81)
    card = model_card.render(typed(facts))
    assert "| metric | val (weight average) | all Testing | leak-free Testing |" in card
    assert "| macro_f1 | 0.810 | 0.491 | 0.214 |" in card
    assert "the average of the weights over the last 8 epochs (best single epoch 8 by val macro-F1)" in card
    assert "| val (weight average) | 0.800 | 0.810 | 430 |" in model_card.version_description(typed(facts))
    assert "Training validates each epoch and the weight average on `val`" in card
    assert "Macro-F1 drops from 0.81 on val" in "\n".join(model_card.failure_modes(typed(facts)))


def test_failure_modes_are_derived_from_the_numbers():
    lines = model_card.failure_modes(typed(facts_like_the_public_dataset()))
    assert (
        lines[0] == "Weakest class: glioma_tumor, recall 0.13 on all Testing (support 100): most of its scans are "
        "missed."
    )
    assert lines[1] == "Least reliable positive call: meningioma_tumor, precision 0.40."
    text = "\n".join(lines)
    assert "Macro-F1 drops from 0.76 on val to 0.49 on all Testing" in text
    assert "Macro-F1 drops from 0.76 on val to 0.21 on leak-free Testing" in text
    assert "inflated by Testing scans that have a copy in Training; on the 135 without one it is 0.21" in text
    assert "ECE 0.227" in text
    assert "No other check" not in text


def test_a_model_without_problems_gets_no_invented_failure_modes():
    facts = facts_like_the_public_dataset()
    good = {
        "n": 400,
        "accuracy": 0.95,
        "macro_f1": 0.95,
        "weighted_f1": 0.95,
        "log_loss": 0.15,
        "ece": 0.03,
        "roc_auc_ovr": 0.99,
        "per_class": _per_class([0.92, 0.95, 0.97, 0.96], [0.94, 0.93, 0.98, 0.95], [100, 100, 100, 100]),
    }
    facts["evaluation"] = {**good, "leak_free": {k: v for k, v in good.items() if k != "per_class"}}
    facts["training"].update(best_val_macro_f1=0.96, best_val_accuracy=0.96)
    lines = model_card.failure_modes(typed(facts))
    assert lines[0].startswith("Weakest class: glioma_tumor, recall 0.92") and lines[0].endswith("(support 100).")
    assert lines[2:] == [
        "No other check (val vs Testing gap, leakage gap, sample size, calibration) flagged a problem."
    ]


def test_empty_or_small_leak_free_subset_is_said_plainly():
    facts = facts_like_the_public_dataset()
    facts["evaluation"]["leak_free"] = {"n": 0, **{k: None for k in HEADLINE}}
    assert any(
        line.startswith("No Testing scan is free of a copy in Training")
        for line in model_card.failure_modes(typed(facts))
    )
    card = model_card.render(typed(facts))
    assert "| macro_f1 | 0.755 | 0.491 | n/a |" in card

    facts = facts_like_the_public_dataset()
    facts["evaluation"]["leak_free"].update(n=40, accuracy=0.5)
    low, high = model_card.wilson_interval(0.5, 40)
    assert (round(low, 2), round(high, 2)) == (0.35, 0.65)
    assert f"rest on 40 scans: accuracy 0.50, 95% interval {low:.2f}-{high:.2f}" in "\n".join(
        model_card.failure_modes(typed(facts))
    )


def test_calibration_and_external_sections_appear_only_when_evaluated():
    facts = facts_like_the_public_dataset()
    facts["evaluation"].update(temperature=1.8, ece_uncalibrated=0.227, ece=0.05)
    facts["evaluation"]["external"] = {
        "path": "data/External",
        "n": 50,
        "accuracy": 0.4,
        "macro_f1": 0.35,
        "exact_in_train": 3,
        "near_in_train": 2,
        "copy_free": {"n": 45, "accuracy": 0.38, "macro_f1": 0.33},
    }
    card = model_card.render(typed(facts))
    assert "temperature-scaled with T = 1.800 (ECE 0.227 before)" in card
    assert "## External data" in card and "path: data/External; 3 exact copies of Training scans" in card
    assert "| macro_f1 | 0.350 | 0.330 |" in card
    assert "On the external data macro-F1 is 0.35 (val 0.76)" in card
    assert "Probabilities are miscalibrated" not in card  # ECE 0.05 after scaling


def test_version_description_and_tags():
    facts = facts_like_the_public_dataset()
    description = model_card.version_description(typed(facts))
    assert "**Research use, not a diagnostic device.**" in description
    assert "| leak-free Testing | 0.237 | 0.214 | 135 |" in description
    assert "| val (best epoch) | 0.747 | 0.755 | 430 |" in description
    assert len(description) < 5000  # MLflow's limit for a version description
    tags = model_card.version_tags(typed(facts))
    assert tags["data_dvc_hash"] == "Testing:aa.dir,Training:bb.dir" and tags["git_commit"] == "f" * 40
    assert tags["test_accuracy"] == "0.523" and tags["test_leak_free_macro_f1"] == "0.214"
    assert tags["test_n"] == "394" and tags["test_leak_free_n"] == "135"
    assert tags["disclaimer"] == "research use, not a diagnostic device"
    assert tags["preprocessing"] == (
        "8-bit grayscale, cropped to the head (margin 0.04) and padded to 128x128, "
        "intensity windowed to the head's 1-99 percentiles, centre crop 112x112, "
        "repeated to 3 channels, normalised with mean (0.485, 0.456, 0.406) and std "
        "(0.229, 0.224, 0.225)"
    )
    assert tags["promotion_metric"] == "leak_free_macro_f1=0.214"
    assert tags["promotion_compared_on"] == "Testing:abc.dir (14 scans)"
    assert tags["champion_score_on_same_scans"] == "version 6: 0.200"
    assert all(isinstance(v, str) and len(v) < 5000 for v in tags.values())


def test_render_does_not_change_its_input():
    facts = facts_like_the_public_dataset()
    before = copy.deepcopy(facts)
    model_card.render(typed(facts))
    model_card.version_tags(typed(facts))
    assert facts == before


@pytest.mark.parametrize("k, n", [(0, 10), (10, 10), (206, 394), (1, 3)])
def test_wilson_interval_equals_scipys(k, n):
    from scipy.stats import binomtest

    expected = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = model_card.wilson_interval(k / n, n)
    assert (low, high) == pytest.approx((expected.low, expected.high), abs=1e-3)


def test_preprocessing_of_a_format_1_model_file():
    facts = facts_like_the_public_dataset()
    facts["preprocessing"] = {"resize_size": 72, "image_size": 64, "mean": [0.5] * 3, "std": [0.25] * 3}
    assert model_card.preprocessing_text(typed(facts)) == (
        "8-bit grayscale, resized to 72x72 (shorter side, centre), "
        "centre crop 64x64, repeated to 3 channels, normalised with mean "
        "(0.500, 0.500, 0.500) and std (0.250, 0.250, 0.250)"
    )


def _by_size(
    recalls_seen: list[float], supports_seen: list[int], recalls_unseen: list[float], supports_unseen: list[int]
) -> dict:
    return {
        "seen": {"n": sum(supports_seen), "per_class": _per_class(recalls_seen, [0.9] * 4, supports_seen)},
        "unseen": {"n": sum(supports_unseen), "per_class": _per_class(recalls_unseen, [0.9] * 4, supports_unseen)},
    }


def test_leak_free_scans_from_other_sources_are_flagged_per_class():
    """Run 23's leak-free Testing scans on the public set: every glioma at an unseen size, pituitary on both sides."""
    facts = facts_like_the_public_dataset()
    facts["evaluation"]["leak_free"]["by_image_size"] = _by_size(
        [0.0, 1.0, 0.0, 0.92], [0, 1, 0, 12], [0.39, 0.60, 0.0, 0.68], [80, 5, 0, 37]
    )
    # the all-Testing split (copies on the seen side) is not what the card reads
    facts["evaluation"]["by_image_size"] = _by_size(
        [0.94, 0.97, 0.95, 0.86], [18, 110, 105, 37], [0.38, 0.60, 0.0, 0.68], [82, 5, 0, 37]
    )
    lines = [line for line in model_card.failure_modes(typed(facts)) if "image sizes no Training scan" in line]
    assert lines == [
        "Recall of glioma_tumor is 0.39 on the 80 leak-free Testing scans of glioma_tumor at image sizes no Training "
        "scan of it has, all of its leak-free scans: they likely come from sources Training holds no "
        "glioma_tumor scan from.",
        "Recall of pituitary_tumor is 0.68 on the 37 leak-free Testing scans of pituitary_tumor at image sizes no "
        "Training scan of it has (other sources, likely), against 0.92 on the 12 at sizes it has: the model learnt "
        "part of the source with the class; expect the lower figure on other hospitals' scans.",
    ]


@pytest.mark.parametrize(
    "recalls_seen, supports_seen, recalls_unseen, supports_unseen",
    [
        ([0.9, 0.9, 0.9, 0.92], [10, 10, 10, 12], [0.85, 0.9, 0.9, 0.88], [10, 10, 10, 37]),  # small drops
        ([0.9, 0.9, 0.9, 0.99], [10, 10, 10, 4], [0.85, 0.9, 0.9, 0.60], [10, 10, 10, 37]),  # 4 seen: no comparison
        ([0.0, 0.9, 0.9, 0.9], [0, 10, 10, 10], [0.30, 0.9, 0.9, 0.9], [19, 10, 10, 10]),  # 19 unseen gliomas: too few
        ([0.0, 0.9, 0.9, 0.9], [0, 10, 10, 10], [0.60, 0.9, 0.9, 0.9], [80, 10, 10, 10]),  # most of them found
        ([0.5, 0.9, 0.9, 0.9], [10, 10, 10, 10], [0.90, 0.9, 0.9, 0.9], [10, 10, 10, 10]),  # better on unseen
    ],
)
def test_no_source_line_without_the_figures_for_it(recalls_seen, supports_seen, recalls_unseen, supports_unseen):
    facts = facts_like_the_public_dataset()
    facts["evaluation"]["leak_free"]["by_image_size"] = _by_size(
        recalls_seen, supports_seen, recalls_unseen, supports_unseen
    )
    assert "image sizes no Training scan" not in "\n".join(model_card.failure_modes(typed(facts)))
