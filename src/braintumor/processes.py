"""Local servers for the tests, the benchmarks and the team stack: `mlflow models serve`, `mlflow server`, moto.

Each server runs in a process group of its own, so that stopping it also stops its workers (uvicorn, gunicorn),
with the project's environment on PATH (`venv_env`: `mlflow models serve` starts uvicorn by name). `served_model`
is the whole life of a served model: a free port, the wait for /ping, the stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from braintumor.errors import BrainTumorError

BIN = Path(sys.executable).parent  # the environment this package runs in: mlflow, dvc, braintumor, uvicorn


class ServerError(BrainTumorError):
    """A server exited or never answered; the message ends with the end of its log."""


def venv_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with the project's environment first on PATH, then `extra`."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(extra or {})}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_process(
    cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen:
    """A server in a process group of its own (so that stop_process also reaches its workers), output to `log`."""
    with open(log, "ab") as log_file:
        return subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )


def stop_process(proc: subprocess.Popen) -> None:
    """Stop a server and its workers, never leaving one behind.

    The children go first, so that the parent reaps them and exits (stopping the parent first would hand them to
    init, which in a container may never reap them); whatever is left then goes with the process group.
    """
    if proc.poll() is not None:
        return
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(child), signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30 if children else 0.1)
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 30)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
    with contextlib.suppress(ProcessLookupError):  # workers the parent left behind
        os.killpg(proc.pid, signal.SIGKILL)


def wait_http(url: str, proc: subprocess.Popen, log: Path, what: str, timeout: float = 600) -> None:
    """Until `url` answers 200; a server that exits or never answers is a ServerError with the end of its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"{what} exited ({proc.returncode}):\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise ServerError(f"{what} not answering {url} after {timeout:.0f} s:\n{log_tail(log)}")


def log_tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.is_file() else "(no log)"


@dataclass(frozen=True)
class ServedModel:
    url: str  # http://127.0.0.1:PORT; POST {url}/invocations
    port: int
    pid: int  # `mlflow models serve`, whose child processes answer the requests
    log: Path


@contextlib.contextmanager
def served_model(
    model_uri: str,
    log: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 180,
    workers: int = 1,
    request_timeout: int | None = None,
) -> Iterator[ServedModel]:
    """`mlflow models serve -m model_uri --env-manager local` on 127.0.0.1 at a free port, ready (/ping answers)
    while the block runs, stopped with its workers after it. `env` is added to venv_env(); the model is read from
    the store its MLFLOW_TRACKING_URI names. `workers`, `request_timeout`: its --workers and --timeout."""
    port = free_port()
    extra = ["--workers", str(workers)] + (["--timeout", str(request_timeout)] if request_timeout else [])
    proc = start_process(
        [
            str(BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            model_uri,
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            *extra,
        ],
        log,
        env=venv_env(env),
        cwd=cwd,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/ping", proc, log, "mlflow models serve", timeout)
        yield ServedModel(url, port, proc.pid, log)
    finally:
        stop_process(proc)


def tree_rss_mb(pid: int) -> float:
    """VmRSS of a process and all its descendants (a server and its workers), in MB, from /proc."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            continue
    return total / 1024
