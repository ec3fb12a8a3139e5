"""The team setup on one machine, for a trial and for the tests: PostgreSQL, an S3 endpoint, an MLflow server.

    make team-up                      # or: .venv/bin/python deploy/team_stack.py [--port 5000]

starts, listening on 127.0.0.1 only:

- a throwaway PostgreSQL cluster (`initdb` + `pg_ctl` in a temporary folder; as the `postgres` user when run as
  root, since PostgreSQL refuses to run as root), password authentication over TCP;
- moto's S3 server, an S3-compatible endpoint over plain HTTP (objects in memory), with two buckets:
  `mlflow-artifacts` (MLflow's artifacts) and `dvc-store` (the DVC remote);
- `mlflow server --backend-store-uri postgresql+psycopg2://... --artifacts-destination s3://mlflow-artifacts
  --serve-artifacts --app-name basic-auth`: runs, metrics and the model registry in PostgreSQL, artifacts in the
  bucket, uploaded and downloaded through the server (so a client needs no S3 credentials for MLflow, only for the
  DVC remote); MLflow's authentication on (deploy/basic_auth.ini, users in the database `mlflow_auth`), with the
  users `pipeline` (the only one that may register versions and move aliases) and `serving` (reads), made by
  deploy/team_auth.py as the admin.

It writes the variables the pipeline needs to an env file (mode 0600: the credentials are made up at start and
never printed) and waits; Ctrl-C stops everything and removes the cluster. deploy/compose.yaml is the same setup
for a real deployment (PostgreSQL, MinIO, the MLflow server). tests/test_team_stack.py runs the pipeline against
it.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from team_auth import PASSWORD_ENV, PIPELINE_USER, SERVING_USER

from braintumor.processes import BIN, ServerError, free_port, start_process, stop_process, wait_http

ARTIFACTS_BUCKET = "mlflow-artifacts"
DVC_BUCKET = "dvc-store"
DB_NAME = DB_USER = "mlflow"
AUTH_DB_NAME = "mlflow_auth"  # the basic-auth app's users and permissions, beside the tracking store
ADMIN_USER = "admin"
AUTH_CONFIG = Path(__file__).with_name("basic_auth.ini")  # deploy/compose.yaml's, with this stack's database
REGION = "us-east-1"
INSTALL_POSTGRES = (
    "PostgreSQL's server binaries (initdb, pg_ctl, postgres) are not installed: "
    "`apt-get install postgresql` (Debian, Ubuntu) or `brew install postgresql@15` (macOS)"
)


class StackError(ServerError):
    """A part of the stack is missing or did not start; the message says which and what to do."""


@dataclass(frozen=True)
class TeamStack:
    """What a running stack offers: addresses (no secrets in them) and the made-up credentials."""

    tracking_uri: str  # http://127.0.0.1:PORT, the MLflow server
    s3_endpoint: str  # http://127.0.0.1:PORT, the S3 API
    db_uri: str  # postgresql+psycopg2://mlflow@127.0.0.1:PORT/mlflow (the password is not in it)
    db_password: str
    s3_access_key: str
    s3_secret_key: str
    folder: Path  # logs: postgres.log, s3.log, mlflow-server.log, team-auth.log
    passwords: dict[str, str]  # the MLflow server's users: admin, pipeline, serving
    flask_secret_key: str  # the basic-auth app's CSRF key

    @property
    def dvc_remote_url(self) -> str:
        return f"s3://{DVC_BUCKET}/braintumor"

    def client_env(self) -> dict[str, str]:
        """What the pipeline exports: the tracking server and its user there, and the S3 credentials of DVC's
        remote."""
        return {
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            **self.mlflow_login(PIPELINE_USER),
            "AWS_ACCESS_KEY_ID": self.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3_secret_key,
            "AWS_DEFAULT_REGION": REGION,
        }

    def mlflow_login(self, user: str) -> dict[str, str]:
        """The variables MLflow's clients authenticate with, as `user` (admin, pipeline or serving)."""
        return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": self.passwords[user]}

    def secrets(self) -> list[str]:
        return [
            self.db_password,
            self.s3_access_key,
            self.s3_secret_key,
            *self.passwords.values(),
            self.flask_secret_key,
        ]

    def s3_client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.s3_endpoint,
            region_name=REGION,
            aws_access_key_id=self.s3_access_key,
            aws_secret_access_key=self.s3_secret_key,
        )


# ---- PostgreSQL ----------------------------------------------------------------------------------------------


def postgres_bindir() -> Path:
    """The folder of initdb and pg_ctl: `pg_config --bindir`, else Debian's /usr/lib/postgresql/N/bin, else PATH."""
    candidates = []
    if shutil.which("pg_config"):
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(Path(found.stdout.strip()))
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)]
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).resolve().parent)
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    raise StackError(INSTALL_POSTGRES)


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(part) for part in Path(path).parent.name.split(".") if part.isdigit())


def _server_account() -> pwd.struct_passwd | None:
    """Who runs PostgreSQL: the current user, or, for root (whom PostgreSQL refuses), `postgres` or `nobody`."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise StackError(
        "running as root, and there is no `postgres` (nor `nobody`) user to run PostgreSQL as: "
        "`apt-get install postgresql` creates it"
    )


@contextlib.contextmanager
def postgres_cluster(password: str, log: Path) -> Iterator[str]:
    """A throwaway cluster on a free local port with a database and owner `mlflow`; yields its URI (no password).

    The URI names the driver: SQLAlchemy 2.1 takes a bare postgresql:// for psycopg 3, 2.0 for psycopg2.

    The cluster lives in its own temporary folder, owned by the server account (a pytest tmp folder of root's
    is closed to it), and is removed afterwards. fsync is off: nothing in it outlives the stack.
    """
    bindir = postgres_bindir()
    account = _server_account()
    as_server = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []} if account else {}
    root = Path(tempfile.mkdtemp(prefix="braintumor-postgres-"))
    try:
        if account:
            os.chown(root, account.pw_uid, account.pw_gid)
        password_file = root / "password"
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
        if account:
            os.chown(password_file, account.pw_uid, account.pw_gid)
        data, port = root / "data", free_port()
        _check(
            subprocess.run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    DB_USER,
                    f"--pwfile={password_file}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                cwd=root,
                capture_output=True,
                text=True,
                **as_server,
            ),
            "initdb",
        )
        password_file.unlink()
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root} -c fsync=off "
            "-c full_page_writes=off"
        )
        _check(
            subprocess.run(
                [
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(root / "server.log"),
                    "-w",
                    "-t",
                    "120",
                    "-o",
                    options,
                    "start",
                ],
                cwd=root,
                capture_output=True,
                text=True,
                **as_server,
            ),
            "pg_ctl start",
        )
        try:
            env = {**os.environ, "PGPASSWORD": password}
            for database in (DB_NAME, AUTH_DB_NAME):
                _check(
                    subprocess.run(
                        [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", DB_USER, database],
                        env=env,
                        capture_output=True,
                        text=True,
                    ),
                    f"createdb {database}",
                )
            yield f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{port}/{DB_NAME}"
        finally:
            subprocess.run(
                [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                cwd=root,
                capture_output=True,
                **as_server,
            )
    finally:
        if (root / "server.log").is_file():
            shutil.copyfile(root / "server.log", log)
        shutil.rmtree(root, ignore_errors=True)


def _check(result: subprocess.CompletedProcess, what: str) -> None:
    if result.returncode != 0:
        raise StackError(f"PostgreSQL: {what} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


# ---- S3 and MLflow -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def s3_server(log: Path) -> Iterator[str]:
    """moto's S3-compatible server on a free local port; yields its endpoint URL."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = start_process([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log)
    try:
        wait_http(f"{endpoint}/moto-api/", proc, log, "the S3 server (moto)")
        yield endpoint
    finally:
        stop_process(proc)


def write_auth_config(db_uri: str, path: Path) -> Path:
    """deploy/basic_auth.ini with this stack's database for the users (`mlflow_auth`, beside `db_uri`'s)."""
    config = configparser.ConfigParser()
    config.read(AUTH_CONFIG)
    config["mlflow"]["database_uri"] = f"{db_uri.rsplit('/', 1)[0]}/{AUTH_DB_NAME}"
    with open(path, "w") as config_file:
        config.write(config_file)
    return path


@contextlib.contextmanager
def mlflow_server(
    db_uri: str,
    secrets_env: dict[str, str],
    s3_endpoint: str,
    log: Path,
    port: int | None = None,
) -> Iterator[str]:
    """`mlflow server --app-name basic-auth` on PostgreSQL with artifacts in the S3 bucket; yields its URL.

    The secrets (`secrets_env`: libpq's PGPASSWORD, boto3's AWS_*, the auth app's admin password and CSRF key)
    reach it through its environment, never its command line nor a file.
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "PG"))}
    env.update(
        secrets_env,
        MLFLOW_AUTH_CONFIG_PATH=str(write_auth_config(db_uri, log.with_name("basic_auth.ini"))),
        AWS_DEFAULT_REGION=REGION,
        MLFLOW_S3_ENDPOINT_URL=s3_endpoint,
        AWS_EC2_METADATA_DISABLED="true",
        # no job runner: its eight processes serve GenAI features this project does not use
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
    )
    proc = start_process(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            db_uri,
            "--artifacts-destination",
            f"s3://{ARTIFACTS_BUCKET}",
            "--serve-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--app-name",
            "basic-auth",
        ],
        log,
        env=env,
    )
    try:
        wait_http(f"{url}/health", proc, log, "mlflow server")
        yield url
    finally:
        stop_process(proc)


def set_up_users(stack: TeamStack) -> None:
    """deploy/team_auth.py as the admin, as compose's `mlflow-users` runs it: the users and their rights."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=stack.tracking_uri, **stack.mlflow_login(ADMIN_USER))
    env.update({variable: stack.passwords[user] for user, variable in PASSWORD_ENV.items()})
    script = Path(__file__).with_name("team_auth.py")
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True)
    (stack.folder / "team-auth.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise StackError(f"{script.name} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


@contextlib.contextmanager
def team_stack(folder: Path, mlflow_port: int | None = None) -> Iterator[TeamStack]:
    """PostgreSQL, S3 with both buckets, and the MLflow server with its users, all stopped (and the cluster
    removed) on exit. Every secret is made up here, so none can be a placeholder."""
    folder.mkdir(parents=True, exist_ok=True)
    db_password, s3_access_key, s3_secret_key, flask_secret_key = (secrets.token_urlsafe(24) for _ in range(4))
    passwords = {user: secrets.token_urlsafe(24) for user in (ADMIN_USER, PIPELINE_USER, SERVING_USER)}
    with postgres_cluster(db_password, folder / "postgres.log") as db_uri, s3_server(folder / "s3.log") as s3:
        partial = TeamStack("", s3, db_uri, db_password, s3_access_key, s3_secret_key, folder, passwords, "")
        client = partial.s3_client()
        for bucket in (ARTIFACTS_BUCKET, DVC_BUCKET):
            client.create_bucket(Bucket=bucket)
        server_secrets = {
            "PGPASSWORD": db_password,
            "AWS_ACCESS_KEY_ID": s3_access_key,
            "AWS_SECRET_ACCESS_KEY": s3_secret_key,
            "MLFLOW_AUTH_ADMIN_PASSWORD": passwords[ADMIN_USER],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": flask_secret_key,
        }
        with mlflow_server(db_uri, server_secrets, s3, folder / "mlflow-server.log", mlflow_port) as tracking_uri:
            stack = TeamStack(
                tracking_uri, s3, db_uri, db_password, s3_access_key, s3_secret_key, folder, passwords, flask_secret_key
            )
            set_up_users(stack)
            yield stack


# ---- make team-up ---------------------------------------------------------------------------------------------


def _write_env_file(path: Path, stack: TeamStack) -> None:
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as env_file:
        env_file.write("# The local team stack (deploy/team_stack.py); valid while it runs. As the pipeline:\n")
        env_file.writelines(f"export {k}={v}\n" for k, v in stack.client_env().items())
        for user in (SERVING_USER, ADMIN_USER):  # for a serving host's shell, and for the users and permissions
            login = " ".join(f"{k}={v}" for k, v in stack.mlflow_login(user).items())
            env_file.write(f"# as {user}: export {login}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=5000, help="the MLflow server's port (default 5000)")
    parser.add_argument(
        "--env-file",
        default="team-stack.env",
        help="where to write the client variables, mode 0600 (default team-stack.env, git-ignored)",
    )
    args = parser.parse_args(argv)
    env_file = Path(args.env_file).resolve()
    logs = Path(tempfile.mkdtemp(prefix="braintumor-team-stack-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a `kill` stops the stack as Ctrl-C does
    try:
        with team_stack(logs, args.port) as stack:
            _write_env_file(env_file, stack)
            print(
                f"""
Team stack up, on this machine only (logs in {logs}):
  MLflow server   {stack.tracking_uri}   (open it in a browser; users and passwords in {env_file.name})
  PostgreSQL      {stack.db_uri}
  S3 (moto)       {stack.s3_endpoint}   buckets s3://{ARTIFACTS_BUCKET}, s3://{DVC_BUCKET}

In each shell that runs the pipeline (it sets {", ".join(stack.client_env())}):
  source {env_file}

Point the DVC remote at the bucket (in .dvc/config.local, which git ignores, as this endpoint is yours alone):
  dvc remote add --local -d team {stack.dvc_remote_url}
  dvc remote modify --local team endpointurl {stack.s3_endpoint}

Then: dvc repro   ->  the run, its model and report land on {stack.tracking_uri}
      dvc push --run-cache
      braintumor predict data/Testing --model models:/brain-tumor-classifier@champion

Ctrl-C stops it all; runs, models and objects are gone then (moto keeps objects in memory).""",
                flush=True,
            )
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopping the team stack")
    except ServerError as exc:  # StackError included
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        env_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
