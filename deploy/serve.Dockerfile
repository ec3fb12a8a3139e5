# The served model as a container: `mlflow models serve` of one registered version, as a non-root user, with a
# health check on /ping and the prediction log on a volume. Build context: `make serve-image` writes it to
# build/serve-image (MLflow's `mlflow models generate-dockerfile` puts the model there as model_dir/: the MLmodel
# file, model.pt, the braintumor package as code, and the pinned requirements.txt; this file replaces MLflow's
# Dockerfile, which is kept beside it as Dockerfile.mlflow). Then:
#
#   docker build -t brain-tumor-classifier build/serve-image
#   docker run -p 8080:8080 -v braintumor-log:/var/log/braintumor brain-tumor-classifier
#
# Why not MLflow's own Dockerfile: it runs as root, has no HEALTHCHECK and starts nginx in front; the settings
# below are the ones docs/serving.md measured. Not built on the project's machines (no Docker daemon there):
# tests/test_serve_load.py checks this file against the build context and runs its CMD, with its ENV, there.
FROM python:3.11-slim

# The CPU build of the pinned torch (about 200 MB rather than PyPI's CUDA build, about 5 GB). For a GPU image:
# docker build --build-arg TORCH_INDEX= ... (PyPI's build, CUDA included) and run it with --gpus all.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

COPY model_dir/requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin braintumor \
    && mkdir -p /var/log/braintumor \
    && chown braintumor /var/log/braintumor

# Read-only for the server's user: the model cannot be changed by what serves it.
COPY model_dir /opt/model

# SERVE_WORKERS, SERVE_THREADS (empty: one per CPU the container sees), SERVE_TIMEOUT (seconds): chosen under
# load, docs/serving.md#under-load (one worker using every core; a timeout above the longest queue). Override
# them with docker run -e. One JSON line per answer in the volume (no pixels, no file names): `braintumor monitor` reads it.
# MODEL_VERSION: the registered version in model_dir (make serve-image fills it in), for the log's `version`.
ARG MODEL_VERSION=
ENV SERVE_WORKERS=1 \
    SERVE_THREADS= \
    SERVE_TIMEOUT=300 \
    BRAINTUMOR_PREDICTION_LOG=/var/log/braintumor/ \
    BRAINTUMOR_MODEL_VERSION=$MODEL_VERSION

USER 10001
VOLUME /var/log/braintumor
EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/ping', timeout=4)"]

CMD ["sh", "-c", "threads=${SERVE_THREADS:-$(nproc)}; export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads; exec mlflow models serve -m /opt/model --env-manager local -h 0.0.0.0 -p 8080 --workers $SERVE_WORKERS --timeout $SERVE_TIMEOUT"]
