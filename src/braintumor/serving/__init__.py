"""The registered model at work: the served request and its bounds (requests.py), the MLflow pyfunc that
`mlflow models serve` loads (mlflow_model.py, models from code), one answer per file for Spark (file_answers.py),
the prediction log (prediction_log.py) and the drift check over it (monitor.py)."""
