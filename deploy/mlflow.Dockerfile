# The MLflow tracking server of deploy/compose.yaml: MLflow with the PostgreSQL driver and boto3 for S3.
# The versions are the ones the tests run the same server with (tests/test_team_stack.py); the [auth] extra
# (Flask-WTF) is what `mlflow server --app-name basic-auth` needs.
FROM python:3.11-slim
RUN pip install --no-cache-dir "mlflow[auth]==3.18.0" "psycopg2-binary==2.9.13" "boto3==1.43.117"
EXPOSE 5000
