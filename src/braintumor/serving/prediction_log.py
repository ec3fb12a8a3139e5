"""The prediction log: one JSON line per answer, for `braintumor monitor` to watch for drift.

When BRAINTUMOR_PREDICTION_LOG names a file (or a folder: `<folder>/predictions.jsonl`), the served model,
`braintumor predict` and the web page (`braintumor app`) append one line per picture they answered:

    {"time": "2026-12-03T06:10:00.123456Z", "source": "serve", "model": "brain-tumor-classifier", "version": "3",
     "run_id": "...", "sha256": "<of the input file's bytes>", "frame": 0, "label": "glioma_tumor",
     "probability": 0.91, "probabilities": {"glioma_tumor": 0.91, ...}, "novelty": 0.62, "unlike_training": false,
     "novelty_quantile": 0.95, "latency_ms": 183.2, "pictures_in_request": 1}

No pixels, no file names, nothing that identifies a patient: the SHA-256 tells a repeated scan from a new one and
nothing else. `latency_ms` is the time to answer the whole request (or `braintumor predict` call) that held the
picture; `novelty_quantile` is the model's design rate (1 - it of Training-like scans are `unlike_training`).

Concurrent writers (the server's workers, threads, a CLI run at the same time) never interleave a line: each
answer's lines go out in one write() to a file opened with O_APPEND, under an exclusive flock of `<log>.lock`
that also covers the size check and the rotation (`<log>` -> `<log>.1` -> ... -> `<log>.<backups>`, the oldest
dropped) once the file would pass BRAINTUMOR_PREDICTION_LOG_MAX_MB (default 100). A log that cannot be written
costs a warning in the server's (or the CLI's) log, never an answer.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

LOG_ENV = "BRAINTUMOR_PREDICTION_LOG"
MAX_MB_ENV = "BRAINTUMOR_PREDICTION_LOG_MAX_MB"
BACKUPS_ENV = "BRAINTUMOR_PREDICTION_LOG_BACKUPS"
VERSION_ENV = "BRAINTUMOR_MODEL_VERSION"  # names the version where no registry can be asked (a container)
FOLDER_FILE = "predictions.jsonl"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelIdentity:
    """Which model answered: the registered name, its version and MLflow run (None where unknown)."""

    name: str | None
    version: str | None
    run_id: str | None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_identity(model_file: str | os.PathLike, bundle: dict, model_uri: str | None = None) -> ModelIdentity:
    """The identity of a model file: the name from its params (tracking.registered_model), the run from the
    MLmodel file of the MLflow model it sits in (when it does), the version from BRAINTUMOR_MODEL_VERSION, else
    from `models:/name/N`, else from the registry MLFLOW_TRACKING_URI names (when it is set)."""
    name = (bundle.get("params") or {}).get("tracking", {}).get("registered_model")
    run_id = _mlmodel_run_id(Path(model_file))
    version = os.environ.get(VERSION_ENV) or _uri_version(model_uri)
    if version is None and run_id and name and os.environ.get("MLFLOW_TRACKING_URI"):
        from braintumor.tracking.runs import version_of_run  # only where a store is named

        version = version_of_run(name, run_id, model_uri)
    return ModelIdentity(name, version, run_id)


def _mlmodel_run_id(model_file: Path) -> str | None:
    import yaml

    for folder in list(model_file.parents)[:3]:  # <model>/artifacts/model.pt, or <model>/model.pt
        if (folder / "MLmodel").is_file():
            try:
                return (yaml.safe_load((folder / "MLmodel").read_text()) or {}).get("run_id")
            except (OSError, yaml.YAMLError):
                return None
    return None


def _uri_version(model_uri: str | None) -> str | None:
    parts = (model_uri or "").removeprefix("models:/").split("/")
    return parts[1] if (model_uri or "").startswith("models:/") and len(parts) == 2 and parts[1].isdigit() else None


def answer_records(
    table: pd.DataFrame,
    digests: list[str],
    classes: list[str],
    model: ModelIdentity,
    *,
    latency_s: float,
    source: str,
    novelty_quantile: float | None = None,
) -> list[dict]:
    """One log record per row of a prediction table (Predictor.table's columns and `frame`); `digests` holds
    the SHA-256 of the input file of each row."""
    now = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    has_novelty = "novelty" in table.columns
    records = []
    for i, (digest, row) in enumerate(zip(digests, table.to_dict(orient="records"))):
        frame = row.get("frame")
        records.append(
            {
                "time": now,
                "source": source,
                "model": model.name,
                "version": model.version,
                "run_id": model.run_id,
                "sha256": digest,
                "frame": None if pd.isna(frame) else int(frame),
                "label": row["label"],
                "probability": float(row["probability"]),
                "probabilities": {name: float(row[name]) for name in classes},
                "novelty": float(row["novelty"]) if has_novelty else None,
                "unlike_training": bool(row["unlike_training"]) if has_novelty else None,
                "novelty_quantile": novelty_quantile if has_novelty else None,
                "latency_ms": round(latency_s * 1000, 3),
                "pictures_in_request": len(table),
            }
        )
    return records


class PredictionLog:
    """Appends records to one JSON-lines file, rotating it by size; see the module's docstring."""

    def __init__(self, path: str | os.PathLike, *, max_bytes: int = 100 * 2**20, backups: int = 5) -> None:
        folder = Path(path).is_dir() or str(path).endswith(os.sep)  # a folder that is not there yet ends in /
        self.path = Path(path) / FOLDER_FILE if folder else Path(path)
        self.max_bytes, self.backups = max_bytes, max(backups, 1)

    @classmethod
    def from_env(cls) -> PredictionLog | None:
        """The log BRAINTUMOR_PREDICTION_LOG names, or None when it is unset (no log)."""
        target = os.environ.get(LOG_ENV, "").strip()
        if not target:
            return None
        try:
            max_mb = float(os.environ.get(MAX_MB_ENV) or 100)
            backups = int(os.environ.get(BACKUPS_ENV) or 5)
        except ValueError:
            log.warning("%s / %s are not numbers; using 100 MB and 5 backups", MAX_MB_ENV, BACKUPS_ENV)
            max_mb, backups = 100, 5
        return cls(target, max_bytes=int(max_mb * 2**20), backups=backups)

    def write(self, records: list[dict]) -> bool:
        """Append `records` (one line each, all in one write). False, with a warning, when the log cannot be
        written: the caller's answer goes out regardless."""
        if not records:
            return True
        data = "".join(json.dumps(r, separators=(",", ":"), allow_nan=False) + "\n" for r in records).encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._locked():
                fd = self._open_rotated(len(data))
                try:
                    written = os.write(fd, data)
                finally:
                    os.close(fd)
            if written != len(data):
                raise OSError(f"wrote {written} of {len(data)} bytes (disk full?)")
        except (OSError, ValueError) as exc:
            log.warning("prediction log %s not written (%d answers): %s", self.path, len(records), exc)
            return False
        return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # also releases the lock

    def _open_rotated(self, incoming: int) -> int:
        """The log's file descriptor (O_APPEND), after moving it to `.1` if `incoming` bytes would pass the size
        bound. Called with the lock held."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        size = os.fstat(fd).st_size
        if size == 0 or size + incoming <= self.max_bytes:
            return fd
        os.close(fd)
        for n in range(self.backups - 1, 0, -1):
            older = self.rotated(n)
            if older.exists():
                os.replace(older, self.rotated(n + 1))
        os.replace(self.path, self.rotated(1))
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def rotated(self, n: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{n}")

    def files(self) -> list[Path]:
        """The log's files, oldest first (the rotated ones, then the current one)."""
        older = sorted(
            (p for p in self.path.parent.glob(f"{self.path.name}.*") if p.suffix[1:].isdigit()),
            key=lambda p: -int(p.suffix[1:]),
        )
        return [*older, *([self.path] if self.path.is_file() else [])]


def log_answers(
    table: pd.DataFrame,
    inputs: list[bytes],
    classes: list[str],
    model: ModelIdentity,
    *,
    latency_s: float,
    source: str,
    novelty_quantile: float | None = None,
    prediction_log: PredictionLog | None = None,
) -> bool:
    """Log a prediction table whose rows carry `row` (the index of their input in `inputs`, the files' bytes), for
    a page or any other caller: a no-op when BRAINTUMOR_PREDICTION_LOG is unset. Never raises for the log's sake."""
    target = prediction_log or PredictionLog.from_env()
    if target is None:
        return True
    try:
        digests = [sha256(data) for data in inputs]
        rows = table["row"].tolist() if "row" in table.columns else list(range(len(table)))
        records = answer_records(
            table,
            [digests[r] for r in rows],
            classes,
            model,
            latency_s=latency_s,
            source=source,
            novelty_quantile=novelty_quantile,
        )
    except Exception:  # a log problem, whatever it is, must not cost the answer
        log.warning("prediction log: answers not recorded", exc_info=True)
        return False
    return target.write(records)


def read_log(path: str | os.PathLike) -> tuple[pd.DataFrame, int]:
    """A prediction log (the file or its folder; rotated files included) -> (one row per record, the number of
    lines that were not JSON records: a line cut by a crash or a full disk). Columns: the record's keys, the
    class probabilities as `p_<class>`, `time` as UTC timestamps."""
    files = PredictionLog(path).files()
    records, bad = [], 0
    for file in files:
        with open(file, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict) or "label" not in record or "time" not in record:
                        raise ValueError
                except ValueError:
                    bad += int(bool(line.strip()))
                    continue
                for name, p in (record.pop("probabilities", None) or {}).items():
                    record[f"p_{name}"] = p
                records.append(record)
    frame = pd.DataFrame.from_records(records)
    if not frame.empty:
        frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    return frame, bad
