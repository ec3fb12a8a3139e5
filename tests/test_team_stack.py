"""The team setup, run for real: an MLflow server on PostgreSQL with artifacts on S3, and a DVC remote on S3.

One stack for the module (deploy/team_stack.py: a throwaway PostgreSQL cluster, moto's S3 server over HTTP on
127.0.0.1, `mlflow server --backend-store-uri postgresql+psycopg2://... --artifacts-destination s3://...
--serve-artifacts`) and one project for it: a temporary git repository with the tiny sample, its data `dvc add`-ed
and a DVC remote on the S3 endpoint, where `dvc repro` ran once and `dvc exp run -S train.seed=7` once, with
MLFLOW_TRACKING_URI pointing at the server, the pipeline's user and password for it (the server runs MLflow's
basic-auth app) and the S3 credentials in the environment, as a team member works.
The tests check what landed where (the server, PostgreSQL's tables, the buckets), that no secret leaked, that the
server refuses a request without credentials and lets only the pipeline's user move @champion, that the registered
champion predicts and serves from the server as the serving hosts' user, and that DVC's remote and run cache work
across clones.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from secrets import token_urlsafe

import pytest
import yaml
from dvc_projects import file_hashes, make_project, ran
from helpers import REPO, THREADS

from braintumor.processes import served_model, venv_env

sys.path.insert(0, str(REPO / "deploy"))
import team_auth  # noqa: E402  (deploy/ is not a package: the same file is compose's `mlflow-users`)
import team_stack  # noqa: E402  (deploy/ is not a package: the same file is `make team-up`)

EXPERIMENT = "brain-tumor-mri"
REGISTERED = "brain-tumor-classifier"
CHAMPION = f"models:/{REGISTERED}@champion"


def team_env(stack: team_stack.TeamStack, user: str = team_stack.PIPELINE_USER) -> dict[str, str]:
    """A team member's environment: the tracking server and S3 credentials, `user`'s login to the server (the
    pipeline's by default), and nothing else of the caller's that would point MLflow, AWS clients, DVC or git
    elsewhere."""
    drop = ("MLFLOW_", "AWS_", "DVC_", "GIT_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        PATH=venv_env()["PATH"],
        DVC_NO_ANALYTICS="1",
        OMP_NUM_THREADS=str(THREADS),
        MPLBACKEND="Agg",
        AWS_EC2_METADATA_DISABLED="true",
    )  # credentials from the environment alone
    env.update(stack.client_env())
    env.update(stack.mlflow_login(user))
    return env


def sh(stack, repo: Path, *cmd: str, timeout: int = 600, user: str = team_stack.PIPELINE_USER) -> str:
    """Run a command as a team member; returns stdout and stderr together, fails with both."""
    env = team_env(stack, user)
    result = subprocess.run(list(cmd), cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout + result.stderr


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rest_status(
    stack, method: str, path: str, body: dict | bytes | None = None, login: tuple[str, str] | None = None
) -> int:
    """The HTTP status of one request to the server's REST API (a JSON body, or a file's bytes for the artifact
    proxy), sent with `login` (user, password) or none."""
    headers = {"Content-Type": "application/octet-stream" if isinstance(body, bytes) else "application/json"}
    if login:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(login).encode()).decode("ascii")
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{stack.tracking_uri}{path}", data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def stack(module_dir):
    try:
        team_stack.postgres_bindir()
    except team_stack.StackError as exc:  # CI installs PostgreSQL (.ci/run): there a missing server is a failure
        (pytest.fail if os.environ.get("CI") else pytest.skip)(str(exc))
    with team_stack.team_stack(module_dir / "team-stack") as running:
        yield running


@pytest.fixture(scope="module")
def client(stack):
    """The checks read the server as the pipeline's user (MLflow's clients take the login from the environment)."""
    from mlflow.tracking import MlflowClient

    with pytest.MonkeyPatch.context() as env:
        for name, value in stack.mlflow_login(team_stack.PIPELINE_USER).items():
            env.setenv(name, value)
        yield MlflowClient(tracking_uri=stack.tracking_uri, registry_uri=stack.tracking_uri)


@pytest.fixture(scope="module")
def team_project(stack, module_dir) -> dict:
    """The project with the team's remote, after `dvc repro` (committed) and `dvc exp run -S train.seed=7`, reset
    to the committed state (the first run's outputs, from the DVC cache)."""
    repo = make_project(module_dir / "team")
    sh(stack, repo, "dvc", "add", "data/Training", "data/Testing")
    sh(stack, repo, "dvc", "remote", "add", "-d", "team", stack.dvc_remote_url)
    sh(stack, repo, "dvc", "remote", "modify", "team", "endpointurl", stack.s3_endpoint)
    sh(stack, repo, "git", "add", "data/Training.dvc", "data/Testing.dvc", "data/.gitignore", ".dvc/config")
    sh(stack, repo, "git", "commit", "-q", "-m", "dataset tracked by DVC, remote on the team's S3")

    first = sh(stack, repo, "dvc", "repro")
    first_run = json.loads((repo / "reports/mlflow_run.json").read_text())
    sh(stack, repo, "git", "commit", "-q", "-m", "pipeline outputs")  # dvc.lock (core.autostage)
    second = sh(stack, repo, "dvc", "exp", "run", "-S", "train.seed=7")
    second_run = json.loads((repo / "reports/mlflow_run.json").read_text())
    sh(stack, repo, "git", "checkout", "HEAD", "--", "params.yaml", "dvc.lock")
    sh(stack, repo, "dvc", "checkout", "--force")
    return {"repo": repo, "output": first + second, "first": first_run, "second": second_run}


# ---- MLflow: the server, its PostgreSQL tables and its bucket ------------------------------------------------


@pytest.mark.slow
def test_run_with_params_metrics_and_tags_on_the_server(stack, team_project, client):
    repo, run_id = team_project["repo"], team_project["first"]["run_id"]
    assert team_project["first"]["tracking_uri"] == stack.tracking_uri
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), "artifacts must go through the server"
    assert not (repo / "mlflow.db").exists() and not (repo / "mlartifacts").exists() and not (repo / "mlruns").exists()

    params = run.data.params
    assert params["train.lr"] == "0.01" and params["train.epochs"] == "1" and params["model.image_size"] == "32"
    assert params["train.seed"] == "42" and params["tracking.registered_model"] == REGISTERED
    assert [m.step for m in client.get_metric_history(run_id, "val_accuracy")] == [1]
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [1]
    evaluation = json.loads((repo / "metrics/eval.json").read_text())  # the first run's (reset from the cache)
    assert run.data.metrics["test_accuracy"] == pytest.approx(evaluation["accuracy"])
    assert run.data.metrics["test_macro_f1"] == pytest.approx(evaluation["macro_f1"])
    assert "test_leak_free_accuracy" in run.data.metrics and "best_val_macro_f1" in run.data.metrics

    tags = run.data.tags
    assert tags["git_commit"] == sh(stack, repo, "git", "rev-parse", "HEAD~1").strip()  # the commit it ran on
    md5 = {
        split: yaml.safe_load((repo / f"data/{split}.dvc").read_text())["outs"][0]["md5"]
        for split in ("Training", "Testing")
    }
    assert tags["data_dvc_hash"] == f"Testing:{md5['Testing']},Training:{md5['Training']}"
    assert tags["device"] == "cpu" and tags["promotion"] == "champion"


@pytest.mark.slow
def test_second_run_is_compared_with_the_first(team_project, client):
    first, second = team_project["first"]["run_id"], team_project["second"]["run_id"]
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {first, second}
    a, b = runs[first].data.params, runs[second].data.params
    assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} == {"train.seed"}
    assert (a["train.seed"], b["train.seed"]) == ("42", "7")
    assert runs[second].data.tags["dvc_exp_name"] == runs[second].info.run_name != ""
    for run in runs.values():
        assert {"test_macro_f1", "test_accuracy", "best_val_macro_f1"} <= set(run.data.metrics)
    ordered = client.search_runs([experiment.experiment_id], filter_string="params.`train.seed` = '7'")
    assert [r.info.run_id for r in ordered] == [second]

    versions = {str(v.version): v.run_id for v in client.search_model_versions(f"name = '{REGISTERED}'")}
    assert versions == {team_project["first"]["model_version"]: first, team_project["second"]["model_version"]: second}
    decision = runs[second].data.tags["promotion"]  # champion if better on the same Testing scans
    assert client.get_model_version_by_alias(REGISTERED, decision).run_id == second
    if decision == "challenger":
        assert client.get_model_version_by_alias(REGISTERED, "champion").run_id == first


@pytest.mark.slow
def test_artifacts_are_objects_in_the_bucket(stack, team_project, client):
    repo, run_id = team_project["repo"], team_project["first"]["run_id"]
    s3 = stack.s3_client()
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=team_stack.ARTIFACTS_BUCKET)
        for o in page.get("Contents", [])
    ]
    experiment_id = client.get_run(run_id).info.experiment_id
    run_prefix = f"{experiment_id}/{run_id}/artifacts/"
    for name in ("report/report.html", "report/augment_preview.png", "metrics/train.json"):
        assert run_prefix + name in keys, f"{name} not in the bucket: {sorted(k for k in keys if run_id in k)}"
    report = s3.get_object(Bucket=team_stack.ARTIFACTS_BUCKET, Key=run_prefix + "report/report.html")["Body"].read()
    assert hashlib.sha256(report).hexdigest() == sha256(repo / "reports/report.html")

    # MLflow 3 logs a model apart from its run: <experiment>/models/<model id>/artifacts/, MLmodel beside the weights
    weights = {
        k: hashlib.sha256(s3.get_object(Bucket=team_stack.ARTIFACTS_BUCKET, Key=k)["Body"].read()).hexdigest()
        for k in keys
        if k.endswith("/model.pt")
    }
    assert len(weights) == 2, f"one model per run: {sorted(weights)}"
    assert sha256(repo / "models/model.pt") in weights.values()
    for key in weights:
        assert f"{key.split('/artifacts/')[0]}/artifacts/MLmodel" in keys, key


@pytest.mark.slow
def test_postgres_holds_runs_and_registry_and_wants_the_password(stack, team_project):
    import psycopg2

    port = int(stack.db_uri.rsplit(":", 1)[1].split("/")[0])
    connect = {"host": "127.0.0.1", "port": port, "user": team_stack.DB_USER, "dbname": team_stack.DB_NAME}
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(**connect, password="not-the-password")
    with psycopg2.connect(**connect, password=stack.db_password) as db, db.cursor() as cursor:
        cursor.execute("SELECT run_uuid FROM runs")
        assert {row[0] for row in cursor.fetchall()} == {
            team_project["first"]["run_id"],
            team_project["second"]["run_id"],
        }
        cursor.execute("SELECT alias, version FROM registered_model_aliases WHERE name = %s", (REGISTERED,))
        assert "champion" in dict(cursor.fetchall())
    db.close()


@pytest.mark.slow
def test_no_secret_in_params_tags_git_outputs_or_logs(stack, team_project, client):
    repo = team_project["repo"]
    texts = {
        "pipeline output": team_project["output"],
        "git history": sh(stack, repo, "git", "log", "-p", "--all"),
        ".dvc/config": (repo / ".dvc/config").read_text(),
    }
    for run in (team_project["first"], team_project["second"]):
        data = client.get_run(run["run_id"]).data
        texts[f"params of {run['run_id']}"] = json.dumps(data.params)
        texts[f"tags of {run['run_id']}"] = json.dumps(data.tags)
    for path in ("reports/mlflow_run.json", "reports/report.html"):
        texts[path] = (repo / path).read_text()
    for log in ("mlflow-server.log", "s3.log", "team-auth.log", "basic_auth.ini"):
        texts[log] = (stack.folder / log).read_text(errors="replace")
    assert texts["pipeline output"] and texts["tags of " + team_project["first"]["run_id"]]
    basic_auth_headers = [  # what an Authorization header carries: user:password in base64
        base64.b64encode(f"{user}:{password}".encode()).decode() for user, password in stack.passwords.items()
    ]
    for secret in stack.secrets() + basic_auth_headers:
        # The S3 server's own access log shows the access key *id* of presigned URLs (X-Amz-Credential=<id>/...),
        # which MLflow uses to download a registered model (evaluate fetches the champion to score it): that id
        # names the key, it is not the secret; the secret key and the database password must appear nowhere.
        where_not = {"s3.log"} if secret == stack.s3_access_key else set()
        leaks = [where for where, text in texts.items() if secret in text and where not in where_not]
        assert not leaks, f"a credential appears in: {leaks}"


# ---- who may put code on the serving hosts: MLflow's authentication ------------------------------------------

SEARCH = ("GET", "/api/2.0/mlflow/experiments/search?max_results=10")
SET_ALIAS = ("POST", "/api/2.0/mlflow/registered-models/alias")
DELETE_ALIAS = ("DELETE", "/api/2.0/mlflow/registered-models/alias")
CREATE_VERSION = ("POST", "/api/2.0/mlflow/model-versions/create")


def champion_code_path(client) -> str:
    """The artifact proxy's path of the champion's code file: writing there is changing what the hosts serve."""
    version = client.get_model_version_by_alias(REGISTERED, "champion").version
    location = client.get_model_version_download_uri(REGISTERED, version)  # mlflow-artifacts:/<exp>/models/<id>/...
    assert location.startswith("mlflow-artifacts:/"), location
    return f"/api/2.0/mlflow-artifacts/artifacts/{location.split(':/', 1)[1].strip('/')}/mlflow_model.py"


@pytest.mark.slow
def test_the_server_refuses_a_request_without_credentials(stack, team_project, client):
    version = team_project["first"]["model_version"]
    requests = [
        (*SEARCH, None),
        (*SET_ALIAS, {"name": REGISTERED, "alias": "champion", "version": version}),
        (*CREATE_VERSION, {"name": REGISTERED, "source": f"models:/{REGISTERED}/{version}"}),
        ("PUT", champion_code_path(client), b"import os  # not the pipeline's code\n"),
    ]
    for method, path, body in requests:
        assert rest_status(stack, method, path, body) == 401, f"{method} {path} without credentials"
        wrong = (team_stack.PIPELINE_USER, "not-the-password")
        assert rest_status(stack, method, path, body, login=wrong) == 401, f"{method} {path} with a wrong password"
    assert rest_status(stack, *SEARCH, login=tuple(stack.mlflow_login(team_stack.PIPELINE_USER).values())) == 200


@pytest.mark.slow
def test_only_the_pipeline_moves_the_champion(stack, team_project, client):
    champion = str(client.get_model_version_by_alias(REGISTERED, "champion").version)
    versions = {team_project["first"]["model_version"], team_project["second"]["model_version"]}
    other = (versions - {champion}).pop()
    admin = tuple(stack.mlflow_login(team_stack.ADMIN_USER).values())
    colleague = ("colleague", token_urlsafe(18))  # a new account: the server's default permission, READ
    assert (
        rest_status(
            stack, "POST", "/api/2.0/mlflow/users/create", dict(zip(["username", "password"], colleague)), admin
        )
        == 200
    )
    serving = tuple(stack.mlflow_login(team_stack.SERVING_USER).values())
    for login in (serving, colleague):
        assert rest_status(stack, *SEARCH, login=login) == 200, f"{login[0]} may read"
        move = {"name": REGISTERED, "alias": "champion", "version": other}
        assert rest_status(stack, *SET_ALIAS, move, login) == 403, f"{login[0]} moved @champion"
        assert rest_status(stack, *DELETE_ALIAS, {"name": REGISTERED, "alias": "champion"}, login) == 403
        register = {"name": REGISTERED, "source": f"models:/{REGISTERED}/{champion}"}
        assert rest_status(stack, *CREATE_VERSION, register, login) == 403, f"{login[0]} registered a version"
        code = b"import os  # not the pipeline's code\n"
        assert rest_status(stack, "PUT", champion_code_path(client), code, login) == 403, f"{login[0]} wrote code"
    assert str(client.get_model_version_by_alias(REGISTERED, "champion").version) == champion
    assert sorted(str(v.version) for v in client.search_model_versions(f"name = '{REGISTERED}'")) == sorted(versions)
    pipeline = tuple(stack.mlflow_login(team_stack.PIPELINE_USER).values())
    assert (
        rest_status(stack, *SET_ALIAS, {"name": REGISTERED, "alias": "champion", "version": champion}, pipeline) == 200
    )


@pytest.mark.slow
def test_setting_up_the_users_again_keeps_their_rights(stack, client):
    """deploy/team_auth.py again (after a change in deploy/.env): existing users get their password set again and
    their grants replaced, rather than an error."""
    team_stack.set_up_users(stack)  # the second time: the stack ran it at start
    admin = "Basic " + base64.b64encode(":".join(stack.mlflow_login(team_stack.ADMIN_USER).values()).encode()).decode()
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    rights = {}
    for user in (team_stack.PIPELINE_USER, team_stack.SERVING_USER):
        for resource_type, resource_id in (("experiment", experiment_id), ("registered_model", REGISTERED)):
            query = urllib.parse.urlencode(
                {"username": user, "resource_type": resource_type, "resource_id": resource_id}
            )
            request = urllib.request.Request(
                f"{stack.tracking_uri}/api/3.0/mlflow/users/permissions/get?{query}", headers={"Authorization": admin}
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                rights[user, resource_type] = json.loads(response.read())["permission"]
    assert rights == {
        ("pipeline", "experiment"): "MANAGE",
        ("pipeline", "registered_model"): "MANAGE",
        ("serving", "experiment"): "READ",
        ("serving", "registered_model"): "READ",
    }
    assert rest_status(stack, *SEARCH, login=tuple(stack.mlflow_login(team_stack.SERVING_USER).values())) == 200


# ---- the registered champion, from the server ----------------------------------------------------------------


@pytest.mark.slow
def test_a_colleague_tries_a_variation_in_an_experiment_and_a_model_of_their_own(stack, team_project, client):
    """A colleague (a new account: the server's default READ) runs the pipeline against the team server under an
    experiment and a registered model of their own (docs/team.md): creating them gives the colleague MANAGE on
    both, so the run logs, registers and promotes there, while the team's runs, versions and @champion stay."""
    admin = tuple(stack.mlflow_login(team_stack.ADMIN_USER).values())
    alice = ("alice", token_urlsafe(18))
    created = rest_status(
        stack, "POST", "/api/2.0/mlflow/users/create", dict(zip(["username", "password"], alice)), admin
    )
    assert created == 200
    team = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs_before = {run.info.run_id for run in client.search_runs([team])}
    versions_before = sorted(str(v.version) for v in client.search_model_versions(f"name = '{REGISTERED}'"))
    champion = str(client.get_model_version_by_alias(REGISTERED, "champion").version)

    env = {**team_env(stack), "MLFLOW_TRACKING_USERNAME": alice[0], "MLFLOW_TRACKING_PASSWORD": alice[1]}
    trial = ["-S", "tracking.experiment=alice-trials", "-S", "tracking.registered_model=alice-classifier"]
    result = subprocess.run(
        ["dvc", "exp", "run", "--temp", *trial, "-S", "train.seed=3"],
        cwd=team_project["repo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    (run,) = client.search_runs([client.get_experiment_by_name("alice-trials").experiment_id])
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
    assert run.data.params["train.seed"] == "3"
    assert str(client.get_model_version_by_alias("alice-classifier", "champion").version) == "1"
    assert {run.info.run_id for run in client.search_runs([team])} == runs_before
    assert sorted(str(v.version) for v in client.search_model_versions(f"name = '{REGISTERED}'")) == versions_before
    assert str(client.get_model_version_by_alias(REGISTERED, "champion").version) == champion
    # and the team's model stays out of the colleague's reach
    move = {"name": REGISTERED, "alias": "champion", "version": versions_before[0]}
    assert rest_status(stack, *SET_ALIAS, move, alice) == 403


@pytest.mark.slow
def test_predict_and_serve_the_champion_from_the_server(stack, team_project, tmp_path):
    """As the serving hosts' user, who may read the registered model and nothing more."""
    repo = team_project["repo"]
    scan = min((repo / "data/Testing/glioma_tumor").glob("*.jpg"))
    serving = team_stack.SERVING_USER
    sh(
        stack,
        tmp_path,
        "braintumor",
        "predict",
        str(scan),
        "--model",
        CHAMPION,
        "--output",
        "predicted.json",
        user=serving,
    )
    predicted = json.loads((tmp_path / "predicted.json").read_text())[0]

    with served_model(CHAMPION, tmp_path / "serve.log", env=team_env(stack, serving), cwd=tmp_path) as server:
        image = base64.b64encode(scan.read_bytes()).decode("ascii")
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[image]]}}).encode()
        request = urllib.request.Request(
            f"{server.url}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            served = json.loads(response.read())["predictions"][0]
    assert served["label"] == predicted["label"]
    for name in ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor", "probability"):
        assert served[name] == pytest.approx(predicted[name], abs=1e-6)


# ---- DVC: the remote on S3, and the run cache across clones --------------------------------------------------


@pytest.mark.slow
def test_dvc_push_then_a_fresh_clone_pulls_and_reuses_the_run_cache(stack, team_project, client, tmp_path):
    repo = team_project["repo"]
    sh(stack, repo, "dvc", "push", "--run-cache")
    s3 = stack.s3_client()
    stored = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=team_stack.DVC_BUCKET, Prefix="braintumor/")
        for o in page.get("Contents", [])
    ]
    assert any(k.startswith("braintumor/files/md5/") for k in stored), stored[:10]
    assert any(k.startswith("braintumor/runs/") for k in stored), "the run cache was not pushed"

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True, capture_output=True)
    assert not (clone / "data/Training").exists() and not (clone / "models").exists()
    sh(stack, clone, "dvc", "pull", "data/Training.dvc", "data/Testing.dvc")
    assert file_hashes(clone / "data") == file_hashes(repo / "data")

    runs_before = len(client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id]))
    sh(stack, clone, "dvc", "fetch", "--run-cache")  # run-cache entries and the outputs they name, no checkout
    reproduced = sh(stack, clone, "dvc", "repro")
    assert "Running stage 'train'" not in reproduced, reproduced
    assert ran(reproduced) == set(), reproduced  # every stage restored from the pushed run cache
    assert "Stage 'train' is cached - skipping run, checking out outputs" in reproduced, reproduced
    assert sha256(clone / "models/model.pt") == sha256(repo / "models/model.pt")
    assert (clone / "reports/mlflow_run.json").read_text() == (repo / "reports/mlflow_run.json").read_text()
    assert len(client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])) == runs_before


# ---- the compose file runs the server the tests run (fast) ---------------------------------------------------


def test_compose_file_matches_the_tested_stack():
    compose = yaml.safe_load((REPO / "deploy/compose.yaml").read_text())
    services = compose["services"]
    command = services["mlflow"]["command"]
    assert command[:2] == ["mlflow", "server"] and "--serve-artifacts" in command
    backend = command[command.index("--backend-store-uri") + 1]
    assert backend.startswith("postgresql+psycopg2://mlflow@") and backend.endswith("/mlflow")  # no password in it
    assert command[command.index("--artifacts-destination") + 1] == f"s3://{team_stack.ARTIFACTS_BUCKET}"
    buckets = " ".join(services["buckets"]["command"])
    assert f"store/{team_stack.ARTIFACTS_BUCKET}" in buckets and f"store/{team_stack.DVC_BUCKET}" in buckets
    environment = services["mlflow"]["environment"]
    assert {"PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"} <= set(environment)
    secrets = [
        *services["postgres"]["environment"].values(),
        *services["minio"]["environment"].values(),
        *services["secrets-check"]["environment"].values(),
        environment["PGPASSWORD"],
        environment["AWS_SECRET_ACCESS_KEY"],
        environment["MLFLOW_AUTH_ADMIN_PASSWORD"],
        environment["MLFLOW_FLASK_SERVER_SECRET_KEY"],
        *(v for k, v in services["mlflow-users"]["environment"].items() if k.endswith("PASSWORD")),
    ]
    assert all(str(v).startswith("${") for v in secrets if v not in ("mlflow",)), "a secret written into compose.yaml"


def test_compose_runs_the_server_with_authentication_and_sets_up_its_users():
    import configparser

    services = yaml.safe_load((REPO / "deploy/compose.yaml").read_text())["services"]
    mlflow = services["mlflow"]
    command = mlflow["command"]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    config_path = mlflow["environment"]["MLFLOW_AUTH_CONFIG_PATH"]
    assert f"./basic_auth.ini:{config_path}:ro" in mlflow["volumes"]
    config = configparser.ConfigParser()
    config.read(REPO / "deploy/basic_auth.ini")
    assert config["mlflow"]["default_permission"] == "READ"  # not EDIT: that would let anyone move @champion
    assert "admin_password" not in config["mlflow"]  # from MLFLOW_AUTH_ADMIN_PASSWORD, not from a file
    database = config["mlflow"]["database_uri"]
    assert database == "postgresql+psycopg2://mlflow@postgres:5432/mlflow_auth"  # no password in it
    assert "CREATE DATABASE mlflow_auth OWNER mlflow;" in (REPO / "deploy/postgres-init.sql").read_text()

    users = services["mlflow-users"]
    assert users["command"] == ["python", "/team_auth.py"] and "./team_auth.py:/team_auth.py:ro" in users["volumes"]
    assert users["environment"]["MLFLOW_TRACKING_USERNAME"] == config["mlflow"]["admin_username"]
    assert users["depends_on"] == {"mlflow": {"condition": "service_healthy"}}
    params = yaml.safe_load((REPO / "params.yaml").read_text())["tracking"]
    assert (team_auth.EXPERIMENT, team_auth.REGISTERED_MODEL) == (params["experiment"], params["registered_model"])
    assert set(team_auth.PASSWORD_ENV.values()) <= set(users["environment"])


def test_compose_publishes_ports_on_127_0_0_1_unless_told():
    services = yaml.safe_load((REPO / "deploy/compose.yaml").read_text())["services"]
    published = {name: service["ports"] for name, service in services.items() if "ports" in service}
    assert set(published) == {"minio", "mlflow"}
    for name, ports in published.items():
        for port in ports:
            assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), f"{name} publishes {port} on every interface"
    assert "# BIND_ADDRESS=127.0.0.1" in (REPO / "deploy/team.env.example").read_text().splitlines()


def check_secrets(env: dict[str, str], names: list[str]) -> subprocess.CompletedProcess:
    """deploy/check_secrets.sh, what compose's `secrets-check` service runs, on `env` alone."""
    script = REPO / "deploy/check_secrets.sh"
    return subprocess.run(["sh", str(script), *names], env=env, capture_output=True, text=True)


def test_compose_refuses_placeholder_secrets():
    services = yaml.safe_load((REPO / "deploy/compose.yaml").read_text())["services"]
    check = services["secrets-check"]
    assert (
        check["command"][:2] == ["sh", "/check_secrets.sh"]
        and "./check_secrets.sh:/check_secrets.sh:ro" in check["volumes"]
    )
    names = check["command"][2:]
    for name in ("postgres", "minio"):  # the others wait on these, or on the server that waits on them
        assert services[name]["depends_on"]["secrets-check"] == {"condition": "service_completed_successfully"}

    example = dict(
        line.split("=", 1)
        for line in (REPO / "deploy/team.env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert set(names) == set(example) - {"MLFLOW_ALLOWED_HOSTS"}, "every secret of team.env.example is checked"
    refused = check_secrets(example, names)
    assert refused.returncode == 1
    for name in names:
        assert f"refused: {name} is a placeholder" in refused.stderr, refused.stderr

    strong = {name: token_urlsafe(24) for name in names}
    accepted = check_secrets(strong, names)
    assert accepted.returncode == 0, accepted.stderr
    for weak, reason in (
        ("Change-Me-Please-1234", "is a placeholder"),
        ("k3Q9xw", "is shorter than 16"),
        ("", "is not set"),
    ):
        result = check_secrets({**strong, names[0]: weak}, names)
        assert result.returncode == 1 and f"refused: {names[0]} {reason}" in result.stderr, result.stderr
        assert all(name not in result.stderr for name in names[1:]), result.stderr


def test_secret_files_are_ignored_by_git():
    ignored = subprocess.run(
        ["git", "check-ignore", "team-stack.env", "deploy/.env"], cwd=REPO, capture_output=True, text=True
    )
    assert ignored.stdout.split() == ["team-stack.env", "deploy/.env"]
