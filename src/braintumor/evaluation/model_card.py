"""The model card, and the registered version's description and tags, from one run's facts: facts in, text out.

`facts` holds what the run wrote: `run` (reports/mlflow_run.json), `classes`, `params` (the model file's),
`preprocessing`, `validation` (reports/validation.json), `training` (the train summary), `evaluation` (the
evaluate stage's results.Evaluation, as in metrics/eval.json; the temperature, the external set and the
`unlike_training` figures are rendered when present), `tags` (the MLflow run's: git commit, data hash, device) and
`promotion` (the evaluate stage's decision, optional).
Every statement under "Known failure modes" is derived from those numbers; nothing is written by hand per run.
"""

from __future__ import annotations

import math
from typing import Any

from braintumor.evaluation.results import HEADLINE, Evaluation, ExternalScores, SizeSplit

DISCLAIMER = "research use, not a diagnostic device"
INTENDED_USE = (
    "Research on telling {classes} apart on single axial brain MRI slices (one image per prediction). "
    "Not for diagnosis, triage or any clinical decision; not validated on scanners, sequences or "
    "populations other than its training data's."
)
# Thresholds of the failure-mode checks (on 0..1 metrics).
LOW_RECALL = 0.5  # a class with a lower recall misses most of its scans
SHIFT_GAP = 0.10  # val macro-F1 this much above Testing macro-F1: Testing is not drawn like Training
LEAK_GAP = 0.05  # all-Testing macro-F1 this much above leak-free: the headline is inflated by copies
HIGH_ECE = 0.10  # expected calibration error above this: probabilities are not chances
SMALL_N = 100  # fewer leak-free Testing scans than this: wide uncertainty
SIZE_GROUP_N = 20  # leak-free Testing scans of a class, all at unseen image sizes, needed to speak of them alone
MIN_CLASS_N = 5  # leak-free Testing scans of a class needed on a side (image size seen in Training or not)


def render(facts: dict[str, Any]) -> str:
    """The model card, markdown."""
    sections = [
        _title(facts),
        _model(facts),
        ("Intended use", _intended_use(facts)),
        ("Data", _data(facts)),
        ("Splits", _splits(facts)),
        ("Leakage found", _leakage(facts)),
        ("Metrics", _metrics(facts)),
        ("Calibration", _calibration(facts["evaluation"], facts["params"]["train"].get("calibration", "val"))),
    ]
    evaluation: Evaluation = facts["evaluation"]
    if evaluation.external is not None:
        sections.append(("External data", _external(evaluation.external)))
    if evaluation.testing.unlike_training is not None:
        sections.append(("Scans unlike the Training scans", _unlike_training(facts)))
    sections.append(
        (
            "Known failure modes (derived from the numbers above)",
            "\n".join(f"- {line}" for line in failure_modes(facts)),
        )
    )
    return "\n\n".join(text if isinstance(text, str) else f"## {text[0]}\n\n{text[1]}" for text in sections) + "\n"


def version_description(facts: dict[str, Any]) -> str:
    """The registered version's description (markdown, a few lines): what it is, its figures, where the card is."""
    test, leak_free = facts["evaluation"].testing, facts["evaluation"].leak_free
    rows = [
        (*saved_val(facts["training"]), facts["validation"].get("n_val")),
        ("all Testing", test.accuracy, test.macro_f1, test.n),
        ("leak-free Testing", leak_free.accuracy, leak_free.macro_f1, leak_free.n),
    ]
    table = _table(["", "accuracy", "macro-F1", "n"], [[name, *values] for name, *values in rows])
    return (
        f"ResNet50 classifier of axial brain MRI slices ({', '.join(facts['classes'])}). "
        f"**{DISCLAIMER.capitalize()}.**\n\n{table}\n\n"
        f"Data (DVC): `{facts['tags'].get('data_dvc_hash', 'unknown')}`; git commit "
        f"`{facts['tags'].get('git_commit', 'unknown')}`. Preprocessing: {preprocessing_text(facts)}. "
        "Full model card: `model_card.md` in this version's artifacts."
    )


def version_tags(facts: dict[str, Any]) -> dict[str, str]:
    """Tags of the registered version (and its LoggedModel): provenance, headline figures, use."""
    test, leak_free = facts["evaluation"].testing, facts["evaluation"].leak_free
    tags = {
        "data_dvc_hash": facts["tags"].get("data_dvc_hash", "unknown"),
        "git_commit": facts["tags"].get("git_commit", "unknown"),
        "preprocessing": preprocessing_text(facts),
        "intended_use": INTENDED_USE.format(classes=", ".join(facts["classes"])),
        "disclaimer": DISCLAIMER,
        "model_card": "model_card.md",
    }
    for prefix, metrics in (("test_", test), ("test_leak_free_", leak_free)):
        for name in ("accuracy", "macro_f1", "n"):
            if getattr(metrics, name) is not None:
                tags[f"{prefix}{name}"] = _fmt(getattr(metrics, name))
    promotion = facts.get("promotion") or {}
    if promotion.get("metric"):
        tags["promotion_metric"] = f"{promotion['metric']}={_fmt(promotion['value'])}"
        tags["promotion_compared_on"] = f"{promotion['compared_on']} ({promotion['scans']} scans)"
        champion = promotion.get("previous_champion_version")
        tags["champion_score_on_same_scans"] = (
            "no other champion"
            if champion is None
            else f"version {champion}: not scored ({promotion.get('champion_unscored_reason')})"
            if promotion.get("previous_champion_value") is None
            else f"version {champion}: {_fmt(promotion['previous_champion_value'])}"
        )
    return tags


def registered_model_text(classes: list[str], name: str) -> tuple[str, dict[str, str]]:
    """The registered model's own description and tags (the same for every version)."""
    description = (
        f"ResNet50 classifier of axial brain MRI slices ({', '.join(classes)}). "
        f"**{DISCLAIMER.capitalize()}.** Serve `models:/{name}@champion`: the evaluate stage gives "
        "`champion` to the version that scores best on the Testing scans it was evaluated on, both "
        "versions scored on the same scans. Each version's model card: `model_card.md` in its artifacts "
        "(also `reports/model_card.md` beside the run's report)."
    )
    tags = {
        "intended_use": INTENDED_USE.format(classes=", ".join(classes)),
        "disclaimer": DISCLAIMER,
        "model_card": f"model_card.md in the artifacts of models:/{name}@champion",
    }
    return description, tags


def preprocessing_text(facts: dict[str, Any]) -> str:
    """What every scan goes through, from the model file's `preprocessing` (with or without a `scan` step)."""
    prep = facts["preprocessing"]
    scan = prep.get("scan") or {"size": prep["resize_size"]}
    size, crop = scan["size"], prep["image_size"]
    steps = ["8-bit grayscale"]
    if scan.get("head_crop"):
        steps.append(f"cropped to the head (margin {scan['crop_margin']}) and padded to {size}x{size}")
    else:
        steps.append(f"resized to {size}x{size} (shorter side, centre)")
    if scan.get("intensity") == "percentile":
        low, high = scan["percentiles"]
        steps.append(f"intensity windowed to the head's {low:g}-{high:g} percentiles")
    elif scan.get("intensity") == "equalize":
        steps.append("histogram-equalised over the head")
    steps.append(
        f"centre crop {crop}x{crop}, repeated to 3 channels, normalised with mean {_floats(prep['mean'])} and "
        f"std {_floats(prep['std'])}"
    )
    return ", ".join(steps)


def failure_modes(facts: dict[str, Any]) -> list[str]:
    """Plain statements, each backed by a figure of the card; the weakest class always comes first."""
    evaluation: Evaluation = facts["evaluation"]
    test, leak_free, train = evaluation.testing, evaluation.leak_free, facts["training"]
    lines = []
    tested = {c: m for c, m in (test.per_class or {}).items() if m.support > 0}
    if tested:
        worst = min(tested, key=lambda c: tested[c].recall)
        recall = tested[worst].recall
        lines.append(
            f"Weakest class: {worst}, recall {recall:.2f} on all Testing (support {tested[worst].support})"
            + (": most of its scans are missed." if recall < LOW_RECALL else ".")
        )
        noisiest = min(tested, key=lambda c: tested[c].precision)
        lines.append(f"Least reliable positive call: {noisiest}, precision {tested[noisiest].precision:.2f}.")
    flags = []  # the checks below; each adds a line only when its figure says so
    untested = [c for c, m in (test.per_class or {}).items() if m.support == 0]
    if untested:
        flags.append(f"No Testing scans of {', '.join(untested)}: untested on those classes.")
    val_f1 = saved_val(train)[2]
    for name, metrics in (("all Testing", test), ("leak-free Testing", leak_free)):
        if val_f1 is not None and metrics.macro_f1 is not None and val_f1 - metrics.macro_f1 > SHIFT_GAP:
            flags.append(
                f"Macro-F1 drops from {val_f1:.2f} on val to {metrics.macro_f1:.2f} on {name}: scans not "
                "drawn like the training set are classified worse; expect the lower figure on new data."
            )
    if test.macro_f1 is not None and leak_free.macro_f1 is not None and test.macro_f1 - leak_free.macro_f1 > LEAK_GAP:
        flags.append(
            f"The all-Testing macro-F1 ({test.macro_f1:.2f}) is inflated by Testing scans that have a copy "
            f"in Training; on the {leak_free.n} without one it is {leak_free.macro_f1:.2f}."
        )
    if leak_free.n == 0:
        flags.append("No Testing scan is free of a copy in Training: no Testing figure measures generalisation.")
    elif leak_free.n < SMALL_N:
        low, high = wilson_interval(leak_free.accuracy, leak_free.n)
        flags.append(
            f"The leak-free figures rest on {leak_free.n} scans: accuracy {leak_free.accuracy:.2f}, "
            f"95% interval {low:.2f}-{high:.2f}."
        )
    if test.ece is not None and test.ece > HIGH_ECE:
        flags.append(
            f"Probabilities are miscalibrated (ECE {test.ece:.3f} on all Testing): do not read them as the "
            "chance of being right."
        )
    unlike = test.unlike_training
    if unlike is not None and unlike.flagged_share is not None and unlike.flagged_share > 2 * (1 - unlike.quantile):
        flags.append(
            f"{unlike.flagged_share:.0%} of the Testing scans are unlike the Training scans (novelty > 1; "
            f"{1 - unlike.quantile:.0%} of val by design): accuracy {_fmt(unlike.accuracy_flagged)} on them, "
            f"{_fmt(unlike.accuracy_unflagged)} on the others."
        )
    flags += _source_flags(leak_free.by_image_size)
    external = evaluation.external.scores if evaluation.external is not None else None
    if external is not None and external.macro_f1 is not None and val_f1 is not None:
        if val_f1 - external.macro_f1 > SHIFT_GAP:
            flags.append(
                f"On the external data macro-F1 is {external.macro_f1:.2f} (val {val_f1:.2f}): it does not "
                "carry over to other sources as is."
            )
    return lines + (
        flags or ["No other check (val vs Testing gap, leakage gap, sample size, calibration) flagged a problem."]
    )


def _source_flags(by_size: SizeSplit | None) -> list[str]:
    """Lines on the leak-free Testing scans (copies of Training scans nearly always share a Training size, so they
    are left out) at image sizes no Training scan of their class has, i.e. from other sources: per class, when they
    fare worse than the class's scans at seen sizes, or when the class has (almost) only such scans and most are
    missed."""
    if by_size is None:
        return []
    lines = []
    for name, after in (by_size.unseen.per_class or {}).items():
        before = by_size.seen.of_class(name)
        if after.support < MIN_CLASS_N:
            continue
        where = f"the {after.support} leak-free Testing scans of {name} at image sizes no Training scan of it has"
        before_n = before.support if before is not None else 0
        if before_n >= MIN_CLASS_N and before.recall - after.recall > SHIFT_GAP:
            lines.append(
                f"Recall of {name} is {after.recall:.2f} on {where} (other sources, likely), against "
                f"{before.recall:.2f} on the {before_n} at sizes it has: the model learnt part "
                "of the source with the class; expect the lower figure on other hospitals' scans."
            )
        elif before_n < MIN_CLASS_N and after.support >= SIZE_GROUP_N and after.recall < LOW_RECALL:
            lines.append(
                f"Recall of {name} is {after.recall:.2f} on {where}, "
                f"{'all' if before_n == 0 else 'nearly all'} of its leak-free scans: they likely "
                f"come from sources Training holds no {name} scan from."
            )
    return lines


def saved_val(train: dict[str, Any]) -> tuple[str, float | None, float | None]:
    """(label, accuracy, macro-F1) on val of the model that was saved: the best epoch's, or with
    train.swa_epochs the weight average's."""
    if "swa_val_macro_f1" in train:
        return "val (weight average)", train.get("swa_val_accuracy"), train["swa_val_macro_f1"]
    return "val (best epoch)", train.get("best_val_accuracy"), train.get("best_val_macro_f1")


def wilson_interval(proportion: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion measured on n cases."""
    centre = (proportion + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(proportion * (1 - proportion) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


# ---- sections ---------------------------------------------------------------------------------------------------


def _title(facts: dict[str, Any]) -> str:
    run = facts["run"]
    version = f" version {run['model_version']}" if run.get("model_version") else ""
    return (
        f"# Model card: {run.get('registered_model', 'model')}{version}\n\n"
        f"> **{DISCLAIMER.capitalize()}.** Generated from MLflow run `{run.get('run_id', '')}` by the evaluate "
        "stage; every figure below comes from that run's files."
    )


def _model(facts: dict[str, Any]) -> tuple[str, str]:
    params, train, run, tags = facts["params"], facts["training"], facts["run"], facts["tags"]
    recipe = params["train"]
    weights = params["model"]["weights"]
    best = f"epoch {train.get('best_epoch', '?')} by val macro-F1"
    saved = (
        f"saved: the average of the weights over the last {train['swa_epochs']} epochs (best single {best})"
        if "swa_epochs" in train
        else f"best {best}"
    )
    rows = [
        ["architecture", f"ResNet50, {len(facts['classes'])} classes: {', '.join(facts['classes'])}"],
        ["initial weights", "none (trained from scratch)" if weights == "none" else weights],
        ["input", preprocessing_text(facts)],
        [
            "training",
            f"{recipe['optimizer']}, lr {recipe['lr']}, {recipe['scheduler']} schedule, "
            f"batch {recipe['batch_size']}, {train.get('epochs_run', '?')} epochs run, " + saved,
        ],
        [
            "git commit",
            tags.get("git_commit", "unknown")
            + (" (with uncommitted changes)" if tags.get("git_dirty") == "true" else ""),
        ],
        ["data (DVC hash)", tags.get("data_dvc_hash", "unknown")],
        [
            "MLflow",
            f"experiment {run.get('experiment', '')}, run {run.get('run_id', '')}, "
            f"model {run.get('model_id') or 'not logged'}",
        ],
    ]
    if tags.get("device"):
        rows.append(["trained on", tags["device"]])
    return "Model", _table(["", ""], rows)


def _intended_use(facts: dict[str, Any]) -> str:
    return (
        INTENDED_USE.format(classes=", ".join(facts["classes"])) + "\n\nInput: one image file per scan (JPEG, "
        "PNG or anything Pillow reads), as `braintumor predict` or the served model's `image` column takes it. "
        "Output: a label and one probability per class."
    )


def _data(facts: dict[str, Any]) -> str:
    report, classes = facts["validation"], facts["classes"]
    per = report["per_class"]
    rows = [[c, per["train"][c], per["val"][c], per["test"][c]] for c in classes]
    rows.append(["total", report["n_train_fit"], report["n_val"], report["n_test"]])
    return (
        _table(["class", "train", "val", "test"], rows) + f"\n\n{report['n_excluded']} files excluded as unusable "
        "(listed in reports/validation.json)."
    )


def _splits(facts: dict[str, Any]) -> str:
    data = facts["params"]["data"]
    return (
        f"`val` is {data['val_fraction']:.0%} of the Training folder, stratified by class and grouped by "
        f"duplicates (seed {data['split_seed']}): no scan has an exact or near copy on the other side. Training "
        + (
            "validates each epoch and the weight average on `val`"
            if "swa_epochs" in facts["training"]
            else "picks its best epoch on `val`"
        )
        + ". `test` is the Testing folder, read only by the evaluate stage."
    )


def _leakage(facts: dict[str, Any]) -> str:
    report, threshold = facts["validation"], facts["params"]["data"]["near_duplicate_threshold"]
    leaked = report["test_exact_in_train"] + report["test_near_in_train"]
    return "\n".join(
        [
            f"- {report['test_exact_in_train']} of {report['n_test']} Testing scans are byte-identical to a Training "
            f"scan and {report['test_near_in_train']} more are near copies (thumbnail correlation >= {threshold}): "
            f"{leaked} leak, {report['test_leak_free']} are leak-free.",
            f"- {report['exact_duplicates_in_train']} extra byte-identical copies inside Training; "
            f"{report['label_conflicts']} groups of copies filed under different classes.",
        ]
    )


def _metrics(facts: dict[str, Any]) -> str:
    test, leak_free = facts["evaluation"].testing, facts["evaluation"].leak_free
    label, accuracy, macro_f1 = saved_val(facts["training"])
    val = {"accuracy": accuracy, "macro_f1": macro_f1}
    rows = [[name, val.get(name), getattr(test, name), getattr(leak_free, name)] for name in HEADLINE]
    rows.append(["scans", facts["validation"].get("n_val"), test.n, leak_free.n])
    parts = [_table(["metric", label, "all Testing", "leak-free Testing"], rows)]
    intervals = [
        "{} {:.2f}-{:.2f}".format(name, *wilson_interval(m.accuracy, m.n))
        for name, m in (("all Testing", test), ("leak-free Testing", leak_free))
        if m.n
    ]
    if intervals:
        parts.append("Accuracy, 95% interval: " + "; ".join(intervals) + ".")
    if test.per_class:
        parts.append(
            "Per class, all Testing:\n\n"
            + _table(
                ["class", "precision", "recall", "F1", "support"],
                [[c, m.precision, m.recall, m.f1, m.support] for c, m in test.per_class.items()],
            )
        )
    promotion = facts.get("promotion") or {}
    if promotion.get("metric"):
        parts.append(promotion_text(promotion))
    return "\n\n".join(parts)


def promotion_text(promotion: dict[str, Any]) -> str:
    """What the evaluate stage decided, on which figure of which scans, both versions scored on the same scans: a
    line of the model card and of the stage's output, e.g. "Version 2 -> champion: leak_free_macro_f1 on 135 scans
    (Testing:<hash>; evaluate.promotion_metric = leak_free_macro_f1): version 1 (champion) 0.310, version 2 0.510."
    """
    alias = promotion["decision"]
    if promotion.get("value") is None:
        return f"Model {alias}."
    version, champion, value = promotion["version"], promotion.get("previous_champion_version"), promotion["value"]
    head = f"Version {version} -> {alias}"
    figures = (
        f"{promotion['metric']} on {promotion['scans']} scans ({promotion['compared_on']}; "
        f"evaluate.promotion_metric = {promotion['promotion_metric']})"
    )
    if champion is None:
        return f"{head}: {figures} {_fmt(value)}; no other version was champion."
    before = promotion.get("previous_champion_value")
    if before is None:
        return (
            f"{head}: the champion, version {champion}, could not be scored on these scans "
            f"({promotion.get('champion_unscored_reason')}); version {version}: {figures} {_fmt(value)}."
        )
    return f"{head}: {figures}: version {champion} (champion) {_fmt(before)}, version {version} {_fmt(value)}" + (
        " (ties keep the champion)." if value == before else "."
    )


def _calibration(evaluation: Evaluation, method: str) -> str:
    from braintumor.model.calibration import fitted_on

    test, leak_free = evaluation.testing, evaluation.leak_free
    lines = [
        f"Expected calibration error: {_fmt(test.ece)} on all Testing, {_fmt(leak_free.ece)} leak-free; "
        f"log loss {_fmt(test.log_loss)} / {_fmt(leak_free.log_loss)}."
    ]
    if test.temperature is not None:
        before = f" (ECE {_fmt(test.ece_uncalibrated)} before)" if test.ece_uncalibrated is not None else ""
        lines.append(
            f"Probabilities are temperature-scaled with T = {_fmt(test.temperature)}{before}, {fitted_on(method)}."
        )
    return " ".join(lines)


def _external(external: ExternalScores) -> str:
    """evaluate.external_data's figures: all its scans and those without a copy in Training (`copy_free`)."""
    rows = [
        [name, getattr(external.scores, name), getattr(external.copy_free, name)]
        for name in (*HEADLINE, "n")
        if getattr(external.scores, name) is not None
    ]
    return (
        f"path: {external.path}; {external.exact_in_train} exact copies of Training scans; "
        f"{external.near_in_train} near copies of Training scans.\n\n"
        + _table(["metric", "external", "external without copies"], rows)
    )


def _unlike_training(facts: dict[str, Any]) -> str:
    """How the `unlike_training` flag (novelty > 1) splits each scored set."""
    from braintumor.evaluation.metrics import NOVELTY_HEADER, novelty_rows

    quantile = facts["evaluation"].testing.unlike_training.quantile
    return (
        f"Every answer comes with a novelty score (how far the scan's features lie from the Training scans'; "
        f"1 = the level {quantile:.0%} of the val scans stay under). A scan above 1 is flagged "
        f"`unlike_training`: by construction about {1 - quantile:.0%} of scans like the Training ones are, and "
        "more of those from other sources. Check a flagged scan before trusting its label.\n\n"
        + _table(list(NOVELTY_HEADER), novelty_rows(facts["evaluation"]))
    )


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _floats(values: Any) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"
