"""One function per DVC stage: read what the stage declares, call the library, write the declared outputs.

`stages/*.py` (what dvc.yaml runs) and the `braintumor` CLI both call these, so a stage behaves the same
whichever way it is started.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from PIL import Image

from braintumor.config import Params
from braintumor.errors import BrainTumorError
from braintumor.fileio import atomic_path, project_path, write_json

if TYPE_CHECKING:
    from braintumor.evaluation.results import Evaluation, ExternalScores
    from braintumor.evaluation.scoring import ScoredSet
    from braintumor.model.network import Inference
    from braintumor.model.novelty import Novelty
    from braintumor.model.predictor import Predictor
    from braintumor.model.transforms import Preprocessing
    from braintumor.training.loop import TrainData

# Each stage imports the modules it runs inside its function, so a stage loads exactly what dvc.yaml lists as its
# deps (tests/test_pipeline.py checks the two agree).
log = logging.getLogger(__name__)


def validate(params: Params) -> dict:
    from braintumor.data.splits import write_manifest
    from braintumor.data.validate import validate_dataset

    result = validate_dataset(params.paths.data, params.data)
    write_manifest(result.manifest, params.paths.manifest)
    write_json(params.paths.validation_report, result.report)
    report = result.report
    print(
        f"validate: {report['n_train']} Training images ({report['n_train_fit']} train / {report['n_val']} val), "
        f"{report['n_test']} Testing, {report['n_excluded']} excluded; "
        f"{report['exact_duplicates_in_train']} exact duplicates in Training; "
        f"Testing with a copy in Training: {report['test_exact_in_train']} exact, "
        f"{report['test_near_in_train']} near; {report['label_conflicts']} label conflicts."
    )
    print(f"validate: wrote {params.paths.validation_report} and {params.paths.manifest}")
    return report


def train(params: Params) -> dict:
    """Train on the manifest's train rows, select on val, write the model, metrics and curves; log to MLflow."""
    from braintumor.model.network import build_model, save_model
    from braintumor.model.transforms import Preprocessing
    from braintumor.runtime import init_distributed, seed_everything
    from braintumor.training.checkpoint import checkpoint_extra
    from braintumor.training.loop import fit

    use_cuda = params.train.device in ("auto", "cuda") and torch.cuda.is_available()
    dist_info = init_distributed("cuda" if use_cuda else "cpu")
    data, images = _training_data(params, dist_info)
    checkpoint = _checkpoint_path(params, images)

    tracker = None
    if dist_info.is_main:
        from braintumor.tracking.runs import RunTracker  # mlflow is imported by the process that logs, only

        tracker = RunTracker(
            params, resume_run_id=checkpoint_extra(checkpoint).get("mlflow_run_id"), training_rows=images
        )
    prep = Preprocessing.from_config(params.model, params.preprocess)
    seed_everything(params.train.seed)  # the initial weights too: torch's own seed differs in every process
    model = build_model(params.model.weights, len(params.data.classes), params.model.dropout)
    try:
        result = fit(
            model,
            data,
            params.train,
            params.augment,
            prep,
            checkpoint_path=checkpoint,
            logger=tracker,
            extra={"mlflow_run_id": tracker.run_id} if tracker else {},
            dist_info=dist_info,
        )
    except BaseException:
        if tracker is not None:
            tracker.end("FAILED")
        raise
    if not dist_info.is_main:
        return {}
    model.load_state_dict(result.final_state)
    inference = calibrate(model, data, prep, params)
    novelty = fit_unlike_training(model, data, prep, params)
    summary = {
        **result.summary(),
        "temperature": inference.temperature,
        "calibration": inference.calibration,
        "precision": result.precision,
    }
    save_model(
        params.paths.model,
        model,
        classes=params.data.classes,
        preprocessing=prep,
        inference=inference,
        params=params.to_dict(),
        metrics=summary,
        novelty=novelty.to_dict() if novelty else None,
    )
    write_json(params.paths.train_metrics, summary)
    _write_history(result.history, Path(params.paths.train_plots) / "history.csv")
    tracker.finish_training(summary, result.device, result.precision)
    version = None
    if params.tracking.log_model:
        version = log_served_model(tracker, params, data.train_images[0])
    from braintumor.tracking.runs import write_run_info

    write_run_info(params.paths.run_info, tracker, version)
    tracker.end()
    checkpoint.unlink(missing_ok=True)  # finished: the next run with these params is a fresh one
    if result.average is not None:
        saved = (
            f"weight average of the last {summary['swa_epochs']} epochs, val acc "
            f"{summary['swa_val_accuracy']:.3f} macro-F1 {summary['swa_val_macro_f1']:.3f}"
        )
    else:
        saved = (
            f"best epoch {summary['best_epoch']} val acc {summary['best_val_accuracy']:.3f} macro-F1 "
            f"{summary['best_val_macro_f1']:.3f}"
        )
    print(
        f"train: {saved}; wrote {params.paths.model}; MLflow run {tracker.run_id}"
        + (f", registered {params.tracking.registered_model} version {version}" if version else "")
    )
    return summary


def calibrate(model, data: TrainData, prep: Preprocessing, params: Params, *, seed: int = 0) -> Inference:
    """The selected model's inference settings, with the temperature fitted as train.calibration says
    (calibration.py): on val, on val and shifted copies of it, or none (T = 1). `seed` picks the shifted copies
    (the train stage uses 0; benchmarks/calibration_shift.py --seeds shows how little T moves with it)."""
    from braintumor.data.cache import ImageDataset, IndexedTransform
    from braintumor.model.calibration import COPIES_PER_STRENGTH, fit_temperature, shift_copies
    from braintumor.model.inference import predict_logits
    from braintumor.model.network import Inference
    from braintumor.model.transforms import eval_preset, shifted_preset

    method = params.train.calibration
    if method == "none":
        return Inference(temperature=1.0, tta_hflip=params.model.tta_hflip, calibration=method)
    val = ImageDataset(data.val_images, data.val_labels)
    device = next(model.parameters()).device
    batch_size = params.evaluate.batch_size
    passes = [(torch.utils.data.DataLoader(val, batch_size=batch_size), eval_preset(prep))]
    if method == "shifted":  # copies made on the CPU scan by scan, from fixed seeds: the same on every run
        for copy_seed, strength in shift_copies(seed):
            shifted = shifted_preset(prep, params.augment, strength, copy_seed, len(val))
            passes.append(
                (
                    torch.utils.data.DataLoader(IndexedTransform(val, shifted), batch_size=batch_size),
                    torch.nn.Identity(),
                )
            )
    fitted = [
        predict_logits(model.eval(), loader, device, transform, tta_hflip=params.model.tta_hflip)
        for loader, transform in passes
    ]
    if method == "shifted":  # clean val weighs as much as each strength's copies together
        fitted = [fitted[0]] * COPIES_PER_STRENGTH + fitted[1:]
    logits, labels = torch.cat([f[0] for f in fitted]), torch.cat([f[1] for f in fitted])
    temperature = fit_temperature(logits, labels)
    print(
        f"train: temperature {temperature:.3f}, fitted on {len(data.val_labels)} val scans"
        + (f" and {len(passes) - 1} intensity-shifted copies of them" if method == "shifted" else "")
    )
    return Inference(temperature=temperature, tta_hflip=params.model.tta_hflip, calibration=method)


def fit_unlike_training(model, data: TrainData, prep: Preprocessing, params: Params) -> Novelty | None:
    """The novelty score (novelty.py) of the selected model: the train scans' feature statistics and the threshold
    that model.unlike_training_quantile of the val scans stay under, all through the eval preset (and mirror
    average when model.tta_hflip). None when the quantile is 0."""
    from braintumor.data.cache import ImageDataset
    from braintumor.model.inference import forward_outputs
    from braintumor.model.novelty import fit_novelty
    from braintumor.model.transforms import eval_preset

    quantile = params.model.unlike_training_quantile
    if not quantile:
        return None
    device = next(model.parameters()).device

    def features(images: np.ndarray, labels: np.ndarray) -> torch.Tensor:
        loader = torch.utils.data.DataLoader(ImageDataset(images, labels), batch_size=params.evaluate.batch_size)
        return forward_outputs(
            model.eval(), loader, device, eval_preset(prep), tta_hflip=params.model.tta_hflip, features=True
        ).features

    novelty = fit_novelty(
        features(data.train_images, data.train_labels),
        data.train_labels,
        features(data.val_images, data.val_labels),
        quantile,
    )
    print(
        f"train: novelty score fitted on {len(data.train_labels)} train scans; threshold at the {quantile:.0%} "
        f"quantile of {len(data.val_labels)} val scans"
    )
    return novelty


def _training_data(params: Params, dist_info) -> tuple[TrainData, pd.DataFrame]:
    """The manifest's train and val rows, decoded once into the cache (rank 0 decodes; other ranks read it)."""
    from braintumor.data.cache import cached_images
    from braintumor.data.splits import in_splits, read_manifest
    from braintumor.model.transforms import Preprocessing
    from braintumor.scans.limits import ImageLimits
    from braintumor.training.loop import TrainData

    frame = read_manifest(params.paths.manifest, params.data.classes)
    rows = in_splits(frame, "train", "val").sort_values("path", kind="stable").reset_index(drop=True)
    cache = project_path(params.paths.cache)  # shared by `dvc exp run --temp` copies of the repository

    def decoded():
        return cached_images(
            rows,
            params.paths.data,
            Preprocessing.from_config(params.model, params.preprocess).scan,
            cache,
            limits=ImageLimits.of(params.data),
            progress=dist_info.is_main,
        )

    if dist_info.enabled:
        images = decoded() if dist_info.is_main else None
        torch.distributed.barrier()
        images = images if images is not None else decoded()
    else:
        images = decoded()
    label_index = {name: i for i, name in enumerate(params.data.classes)}
    labels = rows["label"].map(label_index).to_numpy()
    is_val = (rows["split"] == "val").to_numpy()
    return TrainData(images[~is_val], labels[~is_val], images[is_val], labels[is_val], params.data.classes), rows


def _checkpoint_path(params: Params, rows: pd.DataFrame) -> Path:
    """The checkpoint belongs to these exact params and data: a changed param starts afresh, a rerun resumes."""
    identity = {k: v for k, v in params.to_dict().items() if k in ("preprocess", "model", "train", "augment")}
    identity["classes"] = params.data.classes
    identity["rows"] = rows[["path", "sha256", "split"]].to_numpy().tolist()
    fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return project_path(params.paths.cache) / "checkpoints" / f"train-{fingerprint}.pt"


def _write_history(history, path: Path) -> None:
    frame = pd.DataFrame([vars(h) for h in history])
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


def log_served_model(tracker, params: Params, example_image: np.ndarray) -> str:
    """Log and register the pyfunc model, with one real scan (as a PNG) as its input example; returns the
    registered version. The train stage calls it, and benchmarks/serve_latency.py to serve what the stage would."""
    from braintumor.model.predictor import Predictor
    from braintumor.serving.requests import MODEL_CODE, ROWS, ROWS_PARAM, answer_request

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(example_image)).save(buffer, format="PNG")
    example = pd.DataFrame({"image": [base64.b64encode(buffer.getvalue()).decode("ascii")]})
    output = answer_request(Predictor(params.paths.model), example)
    # params: `rows` ("picture", the REST answer; "file": one row per file, for Spark, file_answers.py)
    return tracker.log_served_model(params.paths.model, example, output, code=MODEL_CODE, params={ROWS_PARAM: ROWS[0]})


def augment_preview(params: Params) -> None:
    """A PNG grid of training scans and their augmented views, made with the train preset.

    The report stage logs it to the run's MLflow artifacts."""
    from braintumor.data.splits import in_splits, read_manifest
    from braintumor.model.transforms import Preprocessing
    from braintumor.preview import preview_figure
    from braintumor.scans.limits import ImageLimits

    frame = read_manifest(params.paths.manifest, params.data.classes)
    fig = preview_figure(
        in_splits(frame, "train"),
        params.paths.data,
        params.data.classes,
        Preprocessing.from_config(params.model, params.preprocess),
        params.augment,
        limits=ImageLimits.of(params.data),
    )
    with atomic_path(params.paths.preview) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    print(f"augment_preview: wrote {params.paths.preview}")


def evaluate(params: Params) -> Evaluation:
    """Batched inference on the Testing rows (and the external set, if any); metrics overall and on the leak-free
    subset; promotion."""
    from braintumor.data.splits import in_splits, read_manifest, size_seen_in_training
    from braintumor.evaluation import metrics as ev
    from braintumor.evaluation import model_card
    from braintumor.evaluation.results import Evaluation
    from braintumor.evaluation.scoring import prediction_table, score_rows, score_set
    from braintumor.model.predictor import Predictor
    from braintumor.runtime import select_device
    from braintumor.tracking.runs import RunLogger, read_run_info

    frame = read_manifest(params.paths.manifest, params.data.classes)
    device = select_device(params.train.device)  # train.device, as training resolved it: auto picks CUDA, MPS, CPU
    predictor = Predictor(params.paths.model, device, batch_size=params.evaluate.batch_size)
    if predictor.classes != list(params.data.classes):
        raise BrainTumorError(
            f"{params.paths.model} was trained on classes {predictor.classes} but data.classes is "
            f"{params.data.classes}. Retrain (`dvc repro train`) or restore data.classes."
        )
    bundle = predictor.bundle
    test = in_splits(frame, "test")
    scored = score_rows(predictor, test, params.paths.data, params)
    y_true, probs = scored.labels, predictor.calibrated(scored.logits)
    leak_free = ev.leak_free_mask(test)
    size_seen = size_seen_in_training(test, in_splits(frame, "train", "val"))
    testing, leak_free_scores = score_set(predictor, scored, params, part=leak_free, size_seen=size_seen)
    predictions = prediction_table(
        predictor,
        scored,
        pd.DataFrame({"path": test["path"], "actual": test["label"]}),
        leak_free=leak_free,
        size_seen_in_training=size_seen,
    )
    outputs = _write_eval_plots(params, predictions, probs, y_true)
    external = None
    if params.evaluate.external_data:
        external, external_csv = _evaluate_external(predictor, frame, params)
        outputs.append(external_csv)
    evaluation = Evaluation(testing, leak_free_scores, external)
    write_json(params.paths.eval_metrics, evaluation.to_dict())

    logger = RunLogger(read_run_info(params.paths.run_info))
    logger.log_test_set(test, params.paths.data)
    testing_metrics, external_metrics = evaluation.mlflow_metrics()
    logger.log_test_metrics(testing_metrics, prefix="")
    if external_metrics:
        logger.log_metrics(external_metrics)
    logger.log_figure(_confusion_figure(y_true, probs, params.data.classes), "evaluation/confusion_matrix.png")
    for path in outputs + [params.paths.eval_metrics]:
        logger.log_artifact(path, "evaluation")
    decision = logger.promote(_compare_with_champion(params, frame, test, leak_free, predictor, scored, device, logger))
    _write_model_card(params, evaluation, bundle, logger, decision)
    logger.end()
    for line in summary(evaluation):
        print(f"evaluate: {line}")
    print(f"evaluate: {model_card.promotion_text(decision)} Wrote {params.paths.model_card}.")
    return evaluation


def summary(evaluation: Evaluation) -> list[str]:
    """The evaluate stage's lines on what it found (Testing, its leak-free part, scans at unseen image sizes, the
    external set)."""
    from braintumor.evaluation.metrics import unseen_size_sentence

    test, lf = evaluation.testing, evaluation.leak_free
    lines = [
        f"Testing accuracy {test.accuracy:.3f} macro-F1 {test.macro_f1:.3f} (n={test.n}); leak-free accuracy "
        + (f"{lf.accuracy:.3f} macro-F1 {lf.macro_f1:.3f} (n={lf.n})" if lf.n else "n/a (n=0)")
        + f"; ECE {test.ece:.3f} (before temperature scaling {test.ece_uncalibrated:.3f})"
    ]
    if test.by_image_size is not None and test.by_image_size.unseen.n:
        lines.append(
            unseen_size_sentence(test.by_image_size, "Testing").lstrip()
            + unseen_size_sentence(lf.by_image_size, "leak-free Testing")
        )
    if evaluation.external is not None:
        ext, free = evaluation.external.scores, evaluation.external.copy_free
        lines.append(
            f"external set accuracy {ext.accuracy:.3f} macro-F1 {ext.macro_f1:.3f} (n={ext.n}); "
            + (f"copy-free accuracy {free.accuracy:.3f} (n={free.n})" if free.n else "no copy-free scan")
            + f"; {evaluation.external.exact_in_train} exact and {evaluation.external.near_in_train} near copies "
            "of Training scans." + unseen_size_sentence(ext.by_image_size, "external")
        )
    return lines


# evaluate.promotion_metric -> (the rows both models are scored on, the metric computed on them)
SAME_SCANS = {
    "leak_free_macro_f1": ("leak_free", "macro_f1"),
    "leak_free_accuracy": ("leak_free", "accuracy"),
    "macro_f1": ("test", "macro_f1"),
    "accuracy": ("test", "accuracy"),
    "val_macro_f1": ("val", "macro_f1"),
}


def _compare_with_champion(
    params: Params,
    frame: pd.DataFrame,
    test: pd.DataFrame,
    leak_free: np.ndarray,
    predictor: Predictor,
    scored: ScoredSet,
    device,
    logger,
):
    """Score the new model and the current champion on the very same rows (each with the preprocessing, TTA and
    temperature its own file carries) on evaluate.promotion_metric: a champion's stored figure came from other
    scans (a synthetic sample, last year's Testing set) and is never compared with this one."""
    from braintumor.data.splits import in_splits
    from braintumor.evaluation.metrics import classification_metrics
    from braintumor.evaluation.scoring import score_rows
    from braintumor.model.predictor import Predictor
    from braintumor.tracking.provenance import dvc_data_hashes
    from braintumor.tracking.runs import SameScansComparison

    part, metric = SAME_SCANS[params.evaluate.promotion_metric]
    val = in_splits(frame, "val")
    if (part == "leak_free" and not leak_free.any()) or (part == "val" and val.empty):
        part = "test"  # no leak-free scan (or no val row): all of Testing it is, and the metric's name says so
    mask = leak_free if part == "leak_free" else np.ones(len(test), dtype=bool)
    rows = val if part == "val" else test[mask]
    folder, hashes = ("Training" if part == "val" else "Testing"), dvc_data_hashes(params.paths.data)
    fingerprint = hashlib.sha256("\n".join(sorted(rows["sha256"])).encode()).hexdigest()[:12]
    compared_on = f"{folder}:{hashes[folder]}" if folder in hashes else f"{folder} rows {fingerprint}"

    def score(of: Predictor, known: ScoredSet | None = None) -> float:
        on = known or score_rows(of, rows, params.paths.data, params)
        return float(getattr(classification_metrics(on.labels, of.calibrated(on.logits), params.data.classes), metric))

    # the new model's Testing outputs are at hand; val rows (val_macro_f1) are scored here
    value = score(predictor, None if part == "val" else scored.subset(mask))
    comparison = SameScansComparison(
        params.evaluate.promotion_metric,
        metric if part == "test" else f"{part}_{metric}",
        len(rows),
        compared_on,
        value,
    )
    champion = logger.champion_version() if logger.info.get("model_version") else None
    if champion is None:
        return comparison
    try:
        held = Predictor(logger.model_file_of(champion), device, batch_size=params.evaluate.batch_size)
        if held.classes != list(params.data.classes):
            raise BrainTumorError(f"it was trained on classes {held.classes}, not {params.data.classes}")
        champion_value = score(held)
    except BrainTumorError as exc:
        return dataclasses.replace(comparison, champion_version=champion, unscored_reason=str(exc))
    except (OSError, RuntimeError, KeyError, ValueError) as exc:  # a file that loads but does not fit these rows
        return dataclasses.replace(
            comparison, champion_version=champion, unscored_reason=f"{type(exc).__name__}: {exc}"
        )
    return dataclasses.replace(comparison, champion_version=champion, champion_value=champion_value)


def _evaluate_external(predictor: Predictor, frame: pd.DataFrame, params: Params) -> tuple[ExternalScores, str]:
    """Metrics on the external set (all of it, and its part without copies of Training scans), and its CSV."""
    from braintumor.data.external import load_external
    from braintumor.data.splits import in_splits, size_seen_in_training
    from braintumor.evaluation.results import ExternalScores
    from braintumor.evaluation.scoring import prediction_table, score_rows, score_set

    training = in_splits(frame, "train", "val")
    external = load_external(params.evaluate.external_data, training, params.paths.data, params.data)
    scored = score_rows(predictor, external.frame, external.root, params)
    size_seen = size_seen_in_training(external.frame, training)
    whole, within = score_set(predictor, scored, params, part=external.copy_free, size_seen=size_seen)
    scores = ExternalScores(
        path=str(params.evaluate.external_data),
        scores=whole,
        n_excluded=len(external.excluded),
        exact_in_train=int(external.frame["exact_in_train"].sum()),
        near_in_train=int(external.frame["near_in_train"].sum()),
        copy_free=within,
    )
    table = prediction_table(
        predictor, scored, external.frame, copy_free=external.copy_free, size_seen_in_training=size_seen
    )
    path = Path(params.paths.eval_plots) / "external_predictions.csv"
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    return scores, str(path)


def _write_model_card(params: Params, evaluation: Evaluation, bundle: dict, logger, decision: dict) -> None:
    """The model card from this run's facts; also the registered version's description and tags."""
    from braintumor.evaluation import model_card
    from braintumor.fileio import read_json, write_text

    facts = {
        "run": logger.info,
        "classes": params.data.classes,
        "params": bundle["params"],
        "preprocessing": bundle["preprocessing"],
        "validation": read_json(params.paths.validation_report),
        "training": bundle["metrics"],
        "evaluation": evaluation,
        "tags": logger.run_tags(),
        "promotion": decision,
    }
    write_text(params.paths.model_card, model_card.render(facts))
    logger.document_model(
        params.paths.model_card, model_card.version_description(facts), model_card.version_tags(facts)
    )
    logger.describe_registered_model(
        *model_card.registered_model_text(params.data.classes, params.tracking.registered_model)
    )


def _write_eval_plots(params: Params, predictions: pd.DataFrame, probs: np.ndarray, y_true: np.ndarray) -> list[str]:
    from braintumor.evaluation import metrics as ev

    classes = params.data.classes
    out = Path(params.paths.eval_plots)
    reliability = ev.reliability_table(y_true, probs, bins=params.evaluate.calibration_bins)
    tables = {
        "predictions.csv": predictions,
        "confusion.csv": predictions[["actual", "predicted"]],
        "roc.csv": ev.roc_table(y_true, probs, classes),
        "reliability.csv": reliability[reliability["count"] > 0],
    }  # empty bins have no point to draw
    written = []
    for name, table in tables.items():
        with atomic_path(out / name) as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
        written.append(str(out / name))
    return written


def _confusion_figure(y_true: np.ndarray, probs: np.ndarray, classes: list[str]):
    from braintumor.evaluation import charts
    from braintumor.evaluation import metrics as ev

    return charts.confusion_matrices(ev.confusion(y_true, probs.argmax(axis=1), len(classes)), classes)


def report(params: Params) -> None:
    """The self-contained HTML report, also logged to the run's MLflow artifacts."""
    from braintumor.evaluation.report import ReportInputs, build_report
    from braintumor.evaluation.results import Evaluation
    from braintumor.fileio import read_json, write_text
    from braintumor.tracking.runs import RunLogger, read_run_info, run_tags_of

    run_info = read_run_info(params.paths.run_info)
    plots = Path(params.paths.eval_plots)
    inputs = ReportInputs(
        params=params.to_dict(),
        validation=read_json(params.paths.validation_report),
        history=pd.read_csv(Path(params.paths.train_plots) / "history.csv"),
        evaluation=Evaluation.from_dict(read_json(params.paths.eval_metrics)),
        predictions=pd.read_csv(plots / "predictions.csv"),
        reliability=pd.read_csv(plots / "reliability.csv"),
        roc=pd.read_csv(plots / "roc.csv"),
        preview_png=Path(params.paths.preview).read_bytes(),
        run_info=run_info,
        run_tags=run_tags_of(run_info["run_id"]),
        data_root=params.paths.data,
        model_path=params.paths.model,
        model_card=Path(params.paths.model_card).read_text(encoding="utf-8"),
        model_card_href=os.path.relpath(params.paths.model_card, Path(params.paths.report).parent),
    )
    page = build_report(
        inputs,
        samples=params.report.sample_predictions,
        mistakes=params.report.confident_mistakes,
        gradcam=params.report.gradcam,
    )
    write_text(params.paths.report, page)
    logger = RunLogger(run_info)
    logger.log_artifact(params.paths.report, "report")
    logger.log_artifact(params.paths.preview, "report")
    logger.end()
    print(f"report: wrote {params.paths.report} ({len(page) / 1e6:.1f} MB, self-contained); open it in a browser")
