"""The served model behind nginx (`make serve-safe`): `mlflow models serve` on 127.0.0.1 at a private port, and
nginx in front of it with the limits MLflow's scoring server lacks (docs/serving.md#behind-a-reverse-proxy).

    python deploy/serve_safe.py [--model models:/brain-tumor-classifier@champion] [--port 5001]
        [--params params.yaml] [--max-rows 16] [--max-body-mb 256] [--max-connections 4] [--timeout 300]
        [--client-timeout 30] [--out build/serve-safe]

MLFLOW_TRACKING_URI names the store (default sqlite:///mlflow.db, as the pipeline writes it). The body cap is
--max-rows x data.max_file_bytes (params.yaml) in base64, plus 64 KiB, and at most --max-body-mb: MLflow parses a
body whole before the model sees it, at several times its size. The model itself refuses a request of more than
data.max_frames pictures (frames x rows). nginx's configuration (deploy/nginx.conf.template, filled in), its
pid, logs and temporary files, and the model server's log are in --out, so it runs as any user. Ctrl-C stops both.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import re
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from braintumor.config import load_params
from braintumor.errors import BrainTumorError
from braintumor.processes import ServerError, served_model, start_process, stop_process, wait_http

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "nginx.conf.template"
JSON_ALLOWANCE = 64 * 1024  # `{"dataframe_split": {"columns": ["image"], "data": [[...]]}}` and params, generously
MAX_BODY_MB = 256  # --max-body-mb's default: parsing a body of 256 MiB cost MLflow about 1.2 GB (benchmarks)
PARSE_FACTOR = 5  # MLflow's parsing peaked at 3.8-4.6 times a body's size (benchmarks/bounded_server.py)
NGINX_HINT = "nginx is not installed: apt-get install -y nginx (Debian's; nginx-light is enough)"


def max_body_bytes(max_file_bytes: int, max_rows: int) -> int:
    """The largest body a request of `max_rows` files of data.max_file_bytes each can need: base64 writes 4
    characters per 3 bytes (rounded up to a whole group), and the JSON around the values is small."""
    return max_rows * 4 * -(-max_file_bytes // 3) + JSON_ALLOWANCE


def body_cap(max_file_bytes: int, max_rows: int, max_body_mb: int) -> tuple[int, str | None]:
    """(the body cap in bytes, a note for the operator or None): `max_rows` files of data.max_file_bytes in base64,
    at most `max_body_mb` MiB. The note says when --max-body-mb cuts the cap (fewer or smaller files per request
    pass than the params allow) and how much memory MLflow's parsing of the cap's bodies can take."""
    wanted, ceiling = max_body_bytes(max_file_bytes, max_rows), max_body_mb * 2**20
    cap = min(wanted, ceiling)
    memory = f"MLflow's parsing can take {PARSE_FACTOR * cap / 1e9:.1f} GB per request at this cap"
    if wanted > ceiling:
        one_file = (ceiling - JSON_ALLOWANCE) * 3 // 4
        return cap, (
            f"note: the body cap is {cap:,} bytes (--max-body-mb {max_body_mb}), not the {wanted:,} that "
            f"{max_rows} rows of data.max_file_bytes={max_file_bytes:,} would need: a request's files may add up to "
            f"{one_file:,} bytes; {memory}. Raise --max-body-mb only with the memory for --max-connections such "
            "requests (docs/serving.md#behind-a-reverse-proxy)"
        )
    if max_body_mb > MAX_BODY_MB and cap > MAX_BODY_MB * 2**20:
        return cap, f"note: the body cap is {cap:,} bytes: {memory} (docs/serving.md#behind-a-reverse-proxy)"
    return cap, None


def render_config(values: dict[str, object]) -> str:
    """deploy/nginx.conf.template with every {{NAME}} replaced; a name without a value (or a value no name uses)
    is an error here, not a broken configuration at nginx's start."""
    text = TEMPLATE.read_text()
    names = set(re.findall(r"\{\{([A-Z_]+)\}\}", text))
    if names != set(values):
        raise BrainTumorError(f"{TEMPLATE.name}: names {sorted(names)} but values for {sorted(values)}")
    return re.sub(r"\{\{([A-Z_]+)\}\}", lambda match: str(values[match.group(1)]), text)


def user_line() -> str:
    """Run as root, nginx hands its workers to `nobody`, who cannot open a private build folder (a pytest tmp_path
    is 0700): they then stay root's, as the master is. As any other user nginx keeps that user and warns about
    the directive, so there is none."""
    if os.geteuid() != 0:
        return ""
    return f"user {pwd.getpwuid(os.geteuid()).pw_name};"


def write_config(out: Path, values: dict[str, object]) -> Path:
    """The build folder (logs/, temp/) and nginx.conf in it, written atomically."""
    for folder in (out / "logs", out / "temp"):
        folder.mkdir(parents=True, exist_ok=True)
    config = out / "nginx.conf"
    partial = config.with_suffix(".conf.partial")
    partial.write_text(render_config(values))
    partial.replace(config)
    return config


@contextlib.contextmanager
def nginx(config: Path, out: Path, url: str) -> Iterator[int]:
    """nginx in the foreground with `config`, answering `url`/ping while the block runs (its pid), then stopped."""
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")  # sbin: not on every PATH
    if binary is None:
        raise ServerError(NGINX_HINT)
    log = out / "logs" / "nginx.out"
    cmd = [binary, "-c", str(config), "-p", str(out), "-e", str(out / "logs" / "error.log"), "-g", "daemon off;"]
    proc = start_process(cmd, log)
    try:
        wait_http(f"{url}/ping", proc, out / "logs" / "error.log", "nginx", timeout=30)
        yield proc.pid
    finally:
        stop_process(proc)


def serve(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    body, note = body_cap(params.data.max_file_bytes, args.max_rows, args.max_body_mb)
    if note:
        print(note, file=sys.stderr, flush=True)
    with served_model(args.model, out / "server.log", workers=args.workers, request_timeout=args.timeout) as server:
        values = {
            "USER": user_line(),
            "LISTEN": f"{args.host}:{args.port}",
            "UPSTREAM": f"127.0.0.1:{server.port}",
            "MAX_ROWS": args.max_rows,
            "MAX_FILE_BYTES": params.data.max_file_bytes,
            "MAX_BODY_BYTES": body,
            "MAX_CONNECTIONS": args.max_connections,
            "CLIENT_TIMEOUT": args.client_timeout,
            "SERVER_TIMEOUT": args.timeout,
            "PROXY_READ_TIMEOUT": args.timeout + 10,
        }
        config = write_config(out, values)
        url = f"http://{args.host}:{args.port}"
        with nginx(config, out, url) as nginx_pid:
            print(
                f"{args.model} at {url}/invocations (POST, application/json), /ping, /health, /version\n"
                f"  nginx (pid {nginx_pid}): bodies up to {body:,} bytes (at most {args.max_rows} rows of "
                f"data.max_file_bytes={params.data.max_file_bytes:,} in base64, at most {args.max_body_mb} MiB), "
                f"{args.max_connections} requests "
                f"at a time, {args.client_timeout} s for a slow client; {config}\n"
                f"  mlflow models serve (pid {server.pid}) on 127.0.0.1:{server.port}, --timeout {args.timeout}; "
                f"log {server.log}\n"
                "Ctrl-C stops both.",
                flush=True,
            )
            while True:
                time.sleep(3600)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: give 1 or more")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models:/brain-tumor-classifier@champion")
    parser.add_argument("--host", default="127.0.0.1", help="where nginx listens (default 127.0.0.1)")
    parser.add_argument("--port", type=positive, default=5001, help="nginx's port (default 5001)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="data.max_file_bytes from here")
    parser.add_argument("--max-rows", type=positive, default=16, help="files per request the body cap allows")
    parser.add_argument(
        "--max-body-mb",
        type=positive,
        default=MAX_BODY_MB,
        help=f"the body cap's ceiling in MiB, whatever --max-rows x data.max_file_bytes (default {MAX_BODY_MB})",
    )
    parser.add_argument("--max-connections", type=positive, default=4, help="requests at a time (503 past it)")
    parser.add_argument("--workers", type=positive, default=1, help="mlflow models serve --workers (default 1)")
    parser.add_argument("--timeout", type=positive, default=300, help="mlflow models serve --timeout, seconds")
    parser.add_argument("--client-timeout", type=positive, default=30, help="seconds between a client's reads")
    parser.add_argument("--out", type=Path, default=Path("build/serve-safe"))
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path('mlflow.db').resolve()}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a `kill` stops both as Ctrl-C does
    try:
        serve(args)
    except KeyboardInterrupt:
        print("\nstopping nginx and mlflow models serve")
    except BrainTumorError as exc:  # ServerError, a bad params.yaml
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
