"""The HTML report: one self-contained file (every image embedded as a data URI, no network needed to open it)."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import yaml

from braintumor.evaluation import charts
from braintumor.evaluation.metrics import confusion, unseen_size_sentence
from braintumor.evaluation.results import HEADLINE, Evaluation, ExternalScores, SetScores
from braintumor.model.predictor import Predictor

CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.note{color:#555;font-size:.9em}code,pre{background:#f6f6f6;padding:.1em .3em}pre{padding:.6em;overflow:auto}
.warn{color:#a40}"""


@dataclass
class ReportInputs:
    params: dict[str, Any]
    validation: dict[str, Any]
    history: pd.DataFrame
    evaluation: Evaluation
    predictions: pd.DataFrame
    reliability: pd.DataFrame
    roc: pd.DataFrame
    preview_png: bytes
    run_info: dict[str, Any]
    run_tags: dict[str, str]
    data_root: str
    model_path: str
    model_card: str  # markdown (model_card.render), written by the evaluate stage
    model_card_href: str  # the card's file relative to the report's folder


def png(fig: plt.Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return _img(buffer.getvalue())


def _img(data: bytes) -> str:
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def _table(rows: list[list[Any]], header: list[str]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def build_report(inputs: ReportInputs, *, samples: int, mistakes: int, gradcam: bool) -> str:
    classes, evaluation = inputs.params["data"]["classes"], inputs.evaluation
    sections = [
        ("Dataset and validation", _dataset_section(inputs.validation, classes)),
        (
            "Preprocessing and augmentation",
            "<p class=note>Each row: a training scan as stored, after "
            "preprocessing (head crop, intensity normalisation: what evaluation, "
            "predict and the served model see), then augmented views made by the "
            "train preset training used (same module, same params).</p>" + _img(inputs.preview_png),
        ),
        ("Training curves", png(charts.training_curves(inputs.history))),
        (
            "Test metrics",
            _metrics_section(evaluation, classes, inputs.params["train"].get("calibration", "val")),
        ),
        *(
            [("Testing by image size (source)", _image_size_section(inputs.validation, evaluation, classes))]
            if evaluation.testing.by_image_size is not None
            else []
        ),
        *(
            [("External validation", _external_section(evaluation.external, classes))]
            if evaluation.external is not None
            else []
        ),
        *(
            [("Scans unlike the Training scans", _novelty_section(evaluation))]
            if evaluation.testing.unlike_training is not None
            else []
        ),
        ("Confusion matrix", png(charts.confusion_matrices(_confusion(inputs.predictions, classes), classes))),
        (
            "Calibration and ROC",
            png(charts.reliability_diagram(inputs.reliability, evaluation.testing.ece))
            + png(charts.roc_curves(inputs.roc)),
        ),
    ]
    predictor = Predictor(inputs.model_path)
    sections.append(("Sample test predictions", _prediction_grid(inputs, predictor, samples, wrong_only=False)))
    sections.append(("Most confident mistakes", _prediction_grid(inputs, predictor, mistakes, wrong_only=True)))
    if gradcam:
        sections.append(("Grad-CAM (last ResNet block)", _gradcam_section(inputs, predictor)))
    sections.append(("Model card", _model_card_section(inputs)))
    sections.append(("Run metadata", _metadata_section(inputs)))
    body = "".join(f"<h2>{html.escape(title)}</h2>{content}" for title, content in sections)
    title = html.escape(run_title(inputs.run_info, inputs.run_tags))
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{title}: brain-tumor MRI classifier report"
        f"</title><style>{CSS}</style></head><body><h1>Brain-tumor MRI classifier: {title}</h1>{body}</body></html>"
    )


def run_title(run_info: dict[str, Any], run_tags: dict[str, str]) -> str:
    """`run "lr=0.003" · brain-tumor-classifier version 2 (champion)`: the run by its name and its model version."""
    name = run_tags.get("mlflow.runName") or run_info.get("run_id", "")
    title = f'run "{name}"'
    if run_info.get("model_version"):
        alias = run_tags.get("promotion")
        title += f" · {run_info.get('registered_model', 'model')} version {run_info['model_version']}" + (
            f" ({alias})" if alias in ("champion", "challenger") else ""
        )
    return title


def _dataset_section(validation: dict[str, Any], classes: list[str]) -> str:
    per = validation["per_class"]
    rows = [[c, per["train"][c], per["val"][c], per["test"][c]] for c in classes]
    rows.append(["total", validation["n_train_fit"], validation["n_val"], validation["n_test"]])
    leak = validation["test_exact_in_train"] + validation["test_near_in_train"]
    parts = [
        _table(rows, ["class", "train", "val", "test"]),
        _table(
            [
                ["excluded (unusable) files", validation["n_excluded"]],
                ["exact duplicates inside Training", validation["exact_duplicates_in_train"]],
                ["Testing images with a byte-identical copy in Training", validation["test_exact_in_train"]],
                ["Testing images with a near-identical copy in Training", validation["test_near_in_train"]],
                ["leak-free Testing images", validation["test_leak_free"]],
                ["groups of copies filed under different classes", validation["label_conflicts"]],
                ["image modes", ", ".join(f"{k}: {n}" for k, n in validation["image_modes"].items())],
                ["image sizes (min / median / max)", " / ".join(validation["image_sizes"].values())],
            ],
            ["check", "result"],
        ),
    ]
    if leak:
        parts.append(
            f"<p class=warn>{leak} of {validation['n_test']} Testing images have a copy in Training: "
            "the headline test figures are optimistic. The leak-free figures below leave them out.</p>"
        )
    if validation["excluded"]:
        excluded = [[item["path"], item["reason"]] for item in validation["excluded"][:50]]
        parts.append(_table(excluded, ["excluded file", "reason"]))
    return "".join(parts)


def _metrics_section(evaluation: Evaluation, classes: list[str], calibration: str) -> str:
    from braintumor.model.calibration import fitted_on

    test, lf = evaluation.testing, evaluation.leak_free
    rows = _headline_rows(test, lf)
    rows.append(["ECE before temperature scaling", _or_na(test.ece_uncalibrated), _or_na(lf.ece_uncalibrated)])
    rows.append(["images", test.n, lf.n])
    note = (
        f"<p class=note>Probabilities are softmax(logits / T) with T = {test.temperature:.3f}, "
        f"{html.escape(fitted_on(calibration))} (temperature scaling: labels, accuracy and F1 are unchanged; "
        "log loss and ECE are after it).</p>"
        if test.temperature is not None
        else ""
    )
    return _table(rows, ["metric", "all Testing", "leak-free Testing"]) + note + _per_class_table(test, classes)


def _headline_rows(whole: SetScores, part: SetScores) -> list[list[Any]]:
    return [[name, _or_na(getattr(whole, name)), _or_na(getattr(part, name))] for name in HEADLINE]


def _per_class_table(scores: SetScores, classes: list[str]) -> str:
    per = scores.per_class or {}
    rows = [[c, per[c].precision, per[c].recall, per[c].f1, per[c].support] for c in classes if c in per]
    return _table(rows, ["class", "precision", "recall", "F1", "support"])


def _image_size_section(validation: dict[str, Any], evaluation: Evaluation, classes: list[str]) -> str:
    shift = validation.get("image_size_shift") or {}

    def share(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0%}"

    sizes = (
        _table(
            [
                [
                    c,
                    s["training_sizes"],
                    f"{s['training_top_size']} ({share(s['training_top_share'])})",
                    s["test_n"],
                    share(s["test_size_seen"]),
                ]
                for c, s in shift.items()
            ],
            [
                "class",
                "image sizes in Training",
                "commonest (share)",
                "Testing scans",
                "share at a size of the class's Training scans",
            ],
        )
        if shift
        else ""
    )
    warnings = "".join(f"<p class=warn>{html.escape(line)}</p>" for line in validation.get("image_size_warnings", []))
    splits = [evaluation.testing.by_image_size, evaluation.leak_free.by_image_size]
    groups = [group for split in splits if split is not None for group in (split.seen, split.unseen)]
    leak_free = splits[1] is not None

    def recall(metrics: SetScores, name: str) -> str:
        score = metrics.of_class(name)
        return f"{score.recall:.2f} of {score.support}" if score else "n/a"

    # accuracy and recall per class: the sides hold different mixes of classes, so compare a class with itself
    rows = [
        ["scans", *(g.n for g in groups)],
        ["accuracy", *(_or_na(g.accuracy) for g in groups)],
        *([f"recall {c}", *(recall(g, c) for g in groups)] for c in classes),
    ]
    header = ["Testing", "all: size seen in Training (same class)", "all: size unseen"]
    if leak_free:
        header += ["leak-free: seen", "leak-free: unseen"]
    return (
        "<p class=note>Image size is a fingerprint of where a scan comes from (a scanner's export, a web copy). "
        "A Testing scan counts as <i>seen</i> when some Training scan of its class has its width x height, "
        "<i>unseen</i> otherwise: a scan from a source the model never learnt its class from. Copies of "
        "Training scans nearly always have a seen size, so compare the leak-free columns: a much lower figure "
        "on unseen scans there says the model learnt the source along with the tumour.</p>"
        + sizes
        + warnings
        + _table(rows, header)
    )


def _novelty_section(evaluation: Evaluation) -> str:
    from braintumor.evaluation.metrics import NOVELTY_HEADER, novelty_rows

    quantile = evaluation.testing.unlike_training.quantile
    return (
        f"<p class=note>Each answer carries a novelty score: how far the scan's features lie from the Training "
        f"scans' (1 = the level {quantile:.0%} of the val scans stay under). Scans above 1 are flagged "
        "<code>unlike_training</code> in predict's and the served model's output: check them before trusting "
        "their labels. The last column: how well the score ranks wrong answers above right ones (0.5 = "
        "chance).</p>" + _table([[_or_na(v) for v in row] for row in novelty_rows(evaluation)], list(NOVELTY_HEADER))
    )


def _external_section(external: ExternalScores, classes: list[str]) -> str:
    rows = _headline_rows(external.scores, external.copy_free)
    rows.append(["images", external.scores.n, external.copy_free.n])
    return (
        f"<p>Another labelled dataset, <code>{html.escape(external.path)}</code>: "
        f"{external.exact_in_train} byte-identical and {external.near_in_train} near copies of Training "
        f"scans found and left out of the copy-free column; {external.n_excluded} unusable files excluded."
        f"{unseen_size_sentence(external.scores.by_image_size, 'external')}</p>"
        + _table(rows, ["metric", "all external", "copy-free external"])
        + _per_class_table(external.scores, classes)
    )


def _or_na(value: Any) -> Any:
    return "n/a" if value is None else value


def _confusion(predictions: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """evaluation.confusion of the predictions table's class names."""
    index = {c: i for i, c in enumerate(classes)}
    return confusion(
        predictions["actual"].map(index).to_numpy(), predictions["predicted"].map(index).to_numpy(), len(classes)
    )


def _prediction_grid(inputs: ReportInputs, predictor: Predictor, count: int, *, wrong_only: bool) -> str:
    frame = inputs.predictions
    if wrong_only:
        frame = frame[frame["actual"] != frame["predicted"]].sort_values("probability", ascending=False)
        if frame.empty:
            return "<p>No mistakes on the Testing set.</p>"
    else:
        frame = frame.sample(n=min(count, len(frame)), random_state=0)
    frame = frame.head(count)
    images = [predictor.load_image(Path(inputs.data_root) / p) for p in frame["path"]]
    captions = [
        f"{Path(p).name[:20]}\ntrue {a.replace('_tumor', '')}\npred {b.replace('_tumor', '')} {q:.2f}"
        for p, a, b, q in zip(frame["path"], frame["actual"], frame["predicted"], frame["probability"])
    ]
    colors = ["green" if a == b else "red" for a, b in zip(frame["actual"], frame["predicted"])]
    return png(charts.image_grid(images, captions, colors=colors)) if images else "<p>None.</p>"


def _gradcam_section(inputs: ReportInputs, predictor: Predictor) -> str:
    frame = inputs.predictions
    pictures, captions = [], []
    for label in inputs.params["data"]["classes"]:
        for correct in (True, False):
            pick = frame[(frame["actual"] == label) & ((frame["predicted"] == label) == correct)]
            if pick.empty:
                continue
            row = pick.sort_values("probability", ascending=not correct).iloc[0]
            image = predictor.load_image(Path(inputs.data_root) / row["path"])
            pictures.append(predictor.explain(image, row["predicted"]))
            captions.append(
                f"{'correct' if correct else 'WRONG'}: true {label.replace('_tumor', '')}\n"
                f"pred {row['predicted'].replace('_tumor', '')} {row['probability']:.2f}"
            )
    note = "<p class=note>Where the evidence for the predicted class lies (red = strongest).</p>"
    return note + (png(charts.image_grid(pictures, captions, columns=4)) if pictures else "<p>None.</p>")


def _model_card_section(inputs: ReportInputs) -> str:
    href = html.escape(inputs.model_card_href)
    return (
        f'<p>The model card: <a href="{href}">{href}</a> (markdown, beside this report; also in the MLflow '
        "run's artifacts next to this report and in the registered model version's artifacts).</p>"
        f"<details><summary>Show it</summary><pre>{html.escape(inputs.model_card)}</pre></details>"
    )


def _metadata_section(inputs: ReportInputs) -> str:
    info, tags = inputs.run_info, inputs.run_tags
    rows = [
        ["MLflow run id", info.get("run_id", "")],
        ["experiment", info.get("experiment", "")],
        ["registered model", f"{info.get('registered_model', '')} version {info.get('model_version')}"],
        [
            "git commit",
            tags.get("git_commit", "") + (" (uncommitted changes)" if tags.get("git_dirty") == "true" else ""),
        ],
        [
            "promotion",
            " ".join(
                filter(
                    None,
                    [
                        tags.get("promotion", ""),
                        tags.get("promotion_metric", ""),
                        tags.get("promotion_compared_on", ""),
                    ],
                )
            ),
        ],
        ["DVC data hash", tags.get("data_dvc_hash", "")],
        ["device", f"{tags.get('device', '')} ({tags.get('precision', 'fp32')})"],
        ["torch", tags.get("torch_version", "")],
        ["tracking URI", info.get("tracking_uri", "")],
    ]
    uri = str(info.get("tracking_uri", ""))
    ui = f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite:") else "the team's MLflow server"
    address = info.get("ui_url") or f"experiment {info.get('experiment', '')}, run {info.get('run_id', '')}"
    return (
        _table(rows, ["", ""]) + f"<p>Open this run in the MLflow UI: start <code>{html.escape(ui)}</code>, "
        f"then go to <code>{html.escape(str(address))}</code>.</p><h3>Params</h3><pre>"
        f"{html.escape(yaml.safe_dump(inputs.params, sort_keys=False))}</pre>"
    )
