"""One function per DVC stage: read what the stage declares, call the library, write the declared outputs.

`stages/*.py` (what dvc.yaml runs) and the `braintumor` CLI both call these, so a stage behaves the same
whichever way it is started.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from braintumor.checkpoint import checkpoint_extra
from braintumor.config import Params
from braintumor.errors import BrainTumorError
from braintumor.data.cache import SquaresDataset, cached_squares
from braintumor.data.splits import read_manifest, rows, write_manifest
from braintumor.data.validate import validate_dataset
from braintumor.fileio import atomic_path, project_path, write_json
from braintumor.model import build_model, save_model
from braintumor.runtime import init_distributed
from braintumor.training import TrainData, fit
from braintumor.transforms import Preprocessing

log = logging.getLogger(__name__)


def validate(params: Params) -> dict:
    result = validate_dataset(params.paths.data, params.data)
    write_manifest(result.manifest, params.paths.manifest)
    write_json(params.paths.validation_report, result.report)
    r = result.report
    print(f"validate: {r['n_train']} Training images ({r['n_train_fit']} train / {r['n_val']} val), "
          f"{r['n_test']} Testing, {r['n_excluded']} excluded; {r['exact_duplicates_in_train']} exact duplicates "
          f"in Training; Testing with a copy in Training: {r['test_exact_in_train']} exact, "
          f"{r['test_near_in_train']} near; {r['label_conflicts']} label conflicts.")
    print(f"validate: wrote {params.paths.validation_report} and {params.paths.manifest}")
    return r


def train(params: Params) -> dict:
    """Train on the manifest's train rows, select on val, write the model, metrics and curves; log to MLflow."""
    use_cuda = params.train.device in ("auto", "cuda") and torch.cuda.is_available()
    dist_info = init_distributed("cuda" if use_cuda else "cpu")
    data, images = _training_data(params, dist_info)
    checkpoint = _checkpoint_path(params, images)

    tracker = None
    if dist_info.is_main:
        from braintumor.tracking import RunTracker  # mlflow is imported by the process that logs, only

        tracker = RunTracker(params, resume_run_id=checkpoint_extra(checkpoint).get("mlflow_run_id"))
    prep = Preprocessing.from_config(params.model)
    model = build_model(params.model.weights, len(params.data.classes), params.model.dropout)
    try:
        result = fit(model, data, params.train, params.augment, prep, checkpoint_path=checkpoint, logger=tracker,
                     extra={"mlflow_run_id": tracker.run_id} if tracker else {}, dist_info=dist_info)
    except BaseException:
        if tracker is not None:
            tracker.end("FAILED")
        raise
    if not dist_info.is_main:
        return {}
    summary = result.summary()
    model.load_state_dict(result.best_state)
    save_model(params.paths.model, model, classes=params.data.classes, preprocessing=prep,
               params=params.to_dict(), metrics=summary)
    write_json(params.paths.train_metrics, summary)
    _write_history(result.history, Path(params.paths.train_plots) / "history.csv")
    tracker.finish_training(summary, result.device)
    version = None
    if params.tracking.log_model:
        version = _log_served_model(tracker, params, data.train_squares[0])
    from braintumor.tracking import write_run_info

    write_run_info(params.paths.run_info, tracker, version)
    tracker.end()
    checkpoint.unlink(missing_ok=True)  # finished: the next run with these params is a fresh one
    print(f"train: best epoch {summary['best_epoch']} val acc {summary['best_val_accuracy']:.3f} macro-F1 "
          f"{summary['best_val_macro_f1']:.3f}; wrote {params.paths.model}; MLflow run {tracker.run_id}"
          + (f", registered {params.tracking.registered_model} version {version}" if version else ""))
    return summary


def _training_data(params: Params, dist_info) -> tuple[TrainData, pd.DataFrame]:
    """The manifest's train and val rows, decoded once into the cache (rank 0 decodes; other ranks read it)."""
    frame = read_manifest(params.paths.manifest, params.data.classes)
    images = rows(frame, "train", "val").sort_values("path", kind="stable").reset_index(drop=True)
    cache = project_path(params.paths.cache)  # shared by `dvc exp run --temp` copies of the repository

    def decoded():
        return cached_squares(images, params.paths.data, params.model.resize_size, cache,
                              max_pixels=params.data.max_image_pixels, progress=dist_info.is_main)

    if dist_info.enabled:
        squares = decoded() if dist_info.is_main else None
        torch.distributed.barrier()
        squares = squares if squares is not None else decoded()
    else:
        squares = decoded()
    label_index = {name: i for i, name in enumerate(params.data.classes)}
    labels = images["label"].map(label_index).to_numpy()
    is_val = (images["split"] == "val").to_numpy()
    return TrainData(squares[~is_val], labels[~is_val], squares[is_val], labels[is_val], params.data.classes), images


def _checkpoint_path(params: Params, images: pd.DataFrame) -> Path:
    """The checkpoint belongs to these exact params and data: a changed param starts afresh, a rerun resumes."""
    identity = {k: v for k, v in params.to_dict().items() if k in ("model", "train", "augment")}
    identity["classes"] = params.data.classes
    identity["rows"] = images[["path", "sha256", "split"]].to_numpy().tolist()
    fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return project_path(params.paths.cache) / "checkpoints" / f"train-{fingerprint}.pt"


def _write_history(history, path: Path) -> None:
    frame = pd.DataFrame([vars(h) for h in history])
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


def _log_served_model(tracker, params: Params, example_square: np.ndarray) -> str:
    """Log and register the pyfunc model, with one real scan (as a PNG) as its input example."""
    from braintumor.serving import Predictor

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(example_square)).save(buffer, format="PNG")
    example = pd.DataFrame({"image": [base64.b64encode(buffer.getvalue()).decode("ascii")]})
    output = Predictor(params.paths.model).predict_frame(example)
    return tracker.log_served_model(params.paths.model, example, output)


def augment_preview(params: Params) -> None:
    """A PNG grid of training scans and their augmented views, made with the train preset.

    The report stage logs it to the run's MLflow artifacts."""
    from braintumor.preview import preview_figure

    frame = read_manifest(params.paths.manifest, params.data.classes)
    fig = preview_figure(rows(frame, "train"), params.paths.data, params.data.classes,
                         Preprocessing.from_config(params.model), params.augment,
                         max_pixels=params.data.max_image_pixels)
    with atomic_path(params.paths.preview) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    print(f"augment_preview: wrote {params.paths.preview}")


def evaluate(params: Params) -> dict:
    """Batched inference on the Testing rows; metrics overall and on the leak-free subset; promotion."""
    from braintumor import evaluation as ev
    from braintumor.inference import predict_probs
    from braintumor.model import load_model
    from braintumor.runtime import select_device
    from braintumor.tracking import RunLogger, read_run_info
    from braintumor.transforms import eval_preset

    frame = read_manifest(params.paths.manifest, params.data.classes)
    device = select_device("cuda" if params.train.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    model, bundle = load_model(params.paths.model, device)
    if list(bundle["classes"]) != list(params.data.classes):
        raise BrainTumorError(f"{params.paths.model} was trained on classes {bundle['classes']} but data.classes is "
                              f"{params.data.classes}. Retrain (`dvc repro train`) or restore data.classes.")
    prep = Preprocessing.from_dict(bundle["preprocessing"])
    test = rows(frame, "test")
    squares = cached_squares(test, params.paths.data, prep.resize_size, project_path(params.paths.cache),
                             max_pixels=params.data.max_image_pixels)
    labels = test["label"].map({c: i for i, c in enumerate(params.data.classes)}).to_numpy()
    loader = torch.utils.data.DataLoader(SquaresDataset(squares, labels), batch_size=params.evaluate.batch_size)
    probs, y_true, _ = predict_probs(model, loader, device, eval_preset(prep), tta_hflip=params.evaluate.tta_hflip)
    leak_free = ev.leak_free_mask(test)
    bins = params.evaluate.calibration_bins
    metrics = ev.classification_metrics(y_true, probs, params.data.classes, bins=bins)
    metrics["leak_free"] = {k: v for k, v in ev.classification_metrics(
        y_true[leak_free], probs[leak_free], params.data.classes, bins=bins).items() if k != "per_class"}
    write_json(params.paths.eval_metrics, metrics)
    outputs = _write_eval_plots(params, test, probs, y_true, leak_free)

    logger = RunLogger(read_run_info(params.paths.run_info))
    headline = {k: metrics[k] for k in ev.HEADLINE if metrics[k] is not None}
    logger.log_metrics(headline, prefix="test_")
    logger.log_metrics({k: v for k, v in metrics["leak_free"].items() if isinstance(v, (int, float))},
                       prefix="test_leak_free_")
    logger.log_figure(_confusion_figure(y_true, probs, params.data.classes), "evaluation/confusion_matrix.png")
    for path in outputs + [params.paths.eval_metrics]:
        logger.log_artifact(path, "evaluation")
    decision = logger.promote(metrics["macro_f1"])
    logger.end()
    lf = metrics["leak_free"]
    print(f"evaluate: Testing accuracy {metrics['accuracy']:.3f} macro-F1 {metrics['macro_f1']:.3f} "
          f"(n={metrics['n']}); leak-free accuracy "
          + (f"{lf['accuracy']:.3f} macro-F1 {lf['macro_f1']:.3f} (n={lf['n']})" if lf["n"] else "n/a (n=0)"))
    print(f"evaluate: model version {decision.get('version')} -> {decision['decision']}"
          + (f" (champion had macro-F1 {decision['previous_champion_test_macro_f1']:.3f})"
             if decision.get("previous_champion_test_macro_f1") is not None else ""))
    return metrics


def _write_eval_plots(params: Params, test: pd.DataFrame, probs: np.ndarray, y_true: np.ndarray,
                      leak_free: np.ndarray) -> list[str]:
    from braintumor import evaluation as ev

    classes = params.data.classes
    out = Path(params.paths.eval_plots)
    y_pred = probs.argmax(axis=1)
    predictions = pd.DataFrame({"path": test["path"], "actual": [classes[i] for i in y_true],
                                "predicted": [classes[i] for i in y_pred], "probability": probs.max(axis=1)})
    for i, name in enumerate(classes):
        predictions[f"p_{name}"] = probs[:, i]
    predictions["leak_free"] = leak_free
    reliability = ev.reliability_table(y_true, probs, bins=params.evaluate.calibration_bins)
    tables = {"predictions.csv": predictions,
              "confusion.csv": predictions[["actual", "predicted"]],
              "roc.csv": ev.roc_table(y_true, probs, classes),
              "reliability.csv": reliability[reliability["count"] > 0]}  # empty bins have no point to draw
    written = []
    for name, table in tables.items():
        with atomic_path(out / name) as tmp:
            table.to_csv(tmp, index=False, float_format="%.6g")
        written.append(str(out / name))
    return written


def _confusion_figure(y_true: np.ndarray, probs: np.ndarray, classes: list[str]):
    from braintumor import charts, evaluation as ev

    return charts.confusion_matrices(ev.confusion(y_true, probs.argmax(axis=1), len(classes)), classes)


def report(params: Params) -> None:
    """The self-contained HTML report, also logged to the run's MLflow artifacts."""
    from braintumor.fileio import read_json, write_text
    from braintumor.report import ReportInputs, build_report
    from braintumor.tracking import RunLogger, read_run_info, run_tags_of

    run_info = read_run_info(params.paths.run_info)
    plots = Path(params.paths.eval_plots)
    inputs = ReportInputs(
        params=params.to_dict(), validation=read_json(params.paths.validation_report),
        history=pd.read_csv(Path(params.paths.train_plots) / "history.csv"),
        evaluation=read_json(params.paths.eval_metrics), predictions=pd.read_csv(plots / "predictions.csv"),
        reliability=pd.read_csv(plots / "reliability.csv"), roc=pd.read_csv(plots / "roc.csv"), preview_png=Path(params.paths.preview).read_bytes(),
        run_info=run_info, run_tags=run_tags_of(run_info["run_id"]), data_root=params.paths.data,
        model_path=params.paths.model)
    page = build_report(inputs, samples=params.report.sample_predictions, mistakes=params.report.confident_mistakes,
                        gradcam=params.report.gradcam)
    write_text(params.paths.report, page)
    logger = RunLogger(run_info)
    logger.log_artifact(params.paths.report, "report")
    logger.log_artifact(params.paths.preview, "report")
    logger.end()
    print(f"report: wrote {params.paths.report} ({len(page) / 1e6:.1f} MB, self-contained); open it in a browser")
