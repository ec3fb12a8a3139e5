"""The served model, logged as MLflow "models from code": this file is the model's code, not a pickle.

`mlflow models serve -m models:/brain-tumor-classifier@champion --env-manager local` loads it. Requests carry a
column `image` of base64-encoded image bytes; a bad row answers HTTP 400 naming the row and the reason.

MLflow's scoring server puts its own prefix (with a preview of the request) before our message; the error body
also carries our message alone as `detail`, and the bad rows as `rows`: [{"row": 1, "reason": "..."}].
"""

import warnings

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from braintumor.errors import BrainTumorError
from braintumor.serving import Predictor


# The input is validated by the model itself (row by row, with messages that name the row), not by type hints.
# (MLflow colours the warning: the message starts with an ANSI escape, hence the leading `.*`.)
warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")


class BrainTumorClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.predictor = Predictor(context.artifacts["model"])

    def predict(self, context, model_input, params=None):
        try:
            return self.predictor.predict_frame(model_input)
        except BrainTumorError as exc:
            rows = [{"row": row, "reason": reason} for row, reason in getattr(exc, "rows", [])]
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE, detail=str(exc),
                                  rows=rows) from None


mlflow.models.set_model(BrainTumorClassifier())
