"""The served model, logged as MLflow "models from code": this file is the model's code, not a pickle.

`mlflow models serve -m models:/brain-tumor-classifier@champion --env-manager local` loads it. Requests carry a
column `image` of base64-encoded file bytes (an image, a DICOM or a NIfTI file); the answer has one row per
picture (`row`, `frame`: a multi-frame DICOM or a volume gives several); a bad row answers HTTP 400 naming the row
and the reason. With the param `rows="file"` (spark_udf's `params`, or `"params"` in a request) it answers one row
per file instead, a bad file's reason in it (file_answers.py): what a Spark UDF needs.

Where it runs: `model_config={"device": ...}` when the model is loaded with one, else MLflow's
MLFLOW_DEFAULT_PREDICTION_DEVICE, else CUDA when PyTorch sees a GPU, else the CPU (the order of MLflow's PyTorch
flavor). Precision: `model_config={"precision": ...}` or BRAINTUMOR_PREDICTION_PRECISION, fp32 unless set.

MLflow's scoring server puts its own prefix (with a preview of the request) before our message; the error body
also carries our message alone as `detail`, and the bad rows as `rows`: [{"row": 1, "reason": "..."}].
"""

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from braintumor.errors import BrainTumorError
from braintumor.model.predictor import Predictor
from braintumor.runtime import PREDICTION_PRECISION_ENV as PRECISION_ENV
from braintumor.runtime import prediction_autocast, prediction_device
from braintumor.serving.file_answers import answer_files, rows_of
from braintumor.serving.prediction_log import PredictionLog, log_answers, model_identity
from braintumor.serving.requests import answer_request


class BrainTumorClassifier(mlflow.pyfunc.PythonModel):
    # `predict` is type-hinted with pandas DataFrames: MLflow takes that hint as "no schema from type hints", so the
    # logged signature (a string column `image`) is the contract, and the model itself checks each row, with
    # messages that name the row. (Without hints MLflow warns "Add type hints to the `predict` method".)

    def load_context(self, context):
        # One thread builds the network and runs every prediction. The scoring server loads the model on its main
        # thread and predicts on its worker threads; on CPU each thread that runs torch gets its own OpenMP thread
        # team, and once the main thread had one (building the network makes it), a forward pass on another
        # thread was 30-50% slower (2 cores): served latency was 1.4-1.6x the bare forward pass, about 1x this
        # way (benchmarks/serve_latency.py). Concurrent requests also take turns instead of oversubscribing cores.
        self.inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="braintumor-inference")
        config = context.model_config or {}
        device = prediction_device(config.get("device"), option="model_config device")
        precision = config.get("precision") or os.environ.get(PRECISION_ENV) or "fp32"
        prediction_autocast(
            device,
            precision,  # a wrong setting is named as the user wrote it
            option="model_config precision" if config.get("precision") else PRECISION_ENV,
        )
        self.predictor = self.inference.submit(
            Predictor, context.artifacts["model"], device=device, precision=precision
        ).result()
        # BRAINTUMOR_PREDICTION_LOG: one JSON line per answered picture (prediction_log.py), for `braintumor monitor`
        self.prediction_log = PredictionLog.from_env()
        if self.prediction_log is not None:
            self.identity = model_identity(context.artifacts["model"], self.predictor.bundle)

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        try:
            start = time.perf_counter()
            if rows_of(params) == "file":  # one row per file, for Spark (file_answers.py)
                return self.inference.submit(answer_files, self.predictor, model_input).result()
            table = self.inference.submit(answer_request, self.predictor, model_input).result()
            if self.prediction_log is not None:
                self._log(model_input, table, time.perf_counter() - start)
            return table
        except BrainTumorError as exc:
            rows = [{"row": row, "reason": reason} for row, reason in getattr(exc, "rows", [])]
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE, detail=str(exc), rows=rows) from None

    def _log(self, model_input: pd.DataFrame, table: pd.DataFrame, latency_s: float) -> None:
        """The answer's lines in the prediction log; the inputs' file bytes again (every row decoded before)."""
        from braintumor.serving.requests import INPUT_COLUMN, decode_base64

        limit = self.predictor.limits.max_file_bytes
        try:
            inputs = [decode_base64(value, max_bytes=limit) for value in model_input[INPUT_COLUMN].tolist()]
        except BrainTumorError:
            return
        novelty = self.predictor.novelty
        log_answers(
            table,
            inputs,
            self.predictor.classes,
            self.identity,
            latency_s=latency_s,
            source="serve",
            novelty_quantile=novelty.quantile if novelty else None,
            prediction_log=self.prediction_log,
        )


mlflow.models.set_model(BrainTumorClassifier())
