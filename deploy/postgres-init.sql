-- The MLflow server's basic-auth app keeps its users and permissions in a database of its own (deploy/basic_auth.ini).
CREATE DATABASE mlflow_auth OWNER mlflow;
