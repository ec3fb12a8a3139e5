"""Who may do what on the team's MLflow server (`mlflow server --app-name basic-auth`): two users and their rights.

    MLFLOW_TRACKING_URI=http://mlflow.internal:5000 MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=... \\
    MLFLOW_PIPELINE_PASSWORD=... MLFLOW_SERVING_PASSWORD=... python deploy/team_auth.py

The served model is models-from-code: serving `models:/brain-tumor-classifier@champion` imports the code logged
with that version. So registering a version and moving `@champion` (rights on the registered model), or writing
the artifacts of a logged model (rights on the experiment that holds them), is running code on every serving host.
Only the pipeline's user gets those rights:

- `pipeline`: MANAGE on the experiment and on the registered model: it creates runs, logs and registers models,
  sets `@champion` / `@challenger` and deletes `@challenger` (deleting an alias takes MANAGE, not EDIT);
- `serving`: READ on both: it resolves `@champion` and downloads the model (stored under the experiment);
- every other account: the server's default_permission (READ, deploy/basic_auth.ini).

The admin creates the experiment and the registered model first, so that no other account can create them and
own them (a creator gets MANAGE). Run it again at will: users that exist get the password given, grants are reset.
Needs only MLflow: deploy/compose.yaml runs it in the server's image, deploy/team_stack.py imports it.
"""

from __future__ import annotations

import argparse
import os
import sys

from mlflow.exceptions import MlflowException
from mlflow.server.auth.client import AuthServiceClient
from mlflow.tracking import MlflowClient

EXPERIMENT = "brain-tumor-mri"  # params.yaml: tracking.experiment
REGISTERED_MODEL = "brain-tumor-classifier"  # params.yaml: tracking.registered_model
PIPELINE_USER, SERVING_USER = "pipeline", "serving"
PASSWORD_ENV = {PIPELINE_USER: "MLFLOW_PIPELINE_PASSWORD", SERVING_USER: "MLFLOW_SERVING_PASSWORD"}
RIGHTS = {PIPELINE_USER: "MANAGE", SERVING_USER: "READ"}  # on the experiment and on the registered model alike


def ensure_user(auth: AuthServiceClient, username: str, password: str) -> None:
    """Create the user, or set its password when it exists (a changed deploy/.env takes effect)."""
    try:
        auth.create_user(username, password)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        auth.update_user_password(username, password)


def grant(auth: AuthServiceClient, username: str, resource_type: str, resource_id: str, permission: str) -> None:
    """Give `username` exactly `permission` on one resource, replacing an earlier grant."""
    try:
        auth.grant_user_permission(username, resource_type, resource_id, permission)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        auth.revoke_user_permission(username, resource_type, resource_id)
        auth.grant_user_permission(username, resource_type, resource_id, permission)


def ensure_resources(client: MlflowClient, experiment: str, registered_model: str) -> str:
    """The experiment and the registered model, created by the caller (the admin) when missing; the experiment id."""
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    try:
        client.get_registered_model(registered_model)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(registered_model)
    return experiment_id


def set_up_team(
    tracking_uri: str,
    passwords: dict[str, str],
    experiment: str = EXPERIMENT,
    registered_model: str = REGISTERED_MODEL,
) -> None:
    """As the admin (MLFLOW_TRACKING_USERNAME / _PASSWORD of this process): users, resources, grants."""
    auth, client = AuthServiceClient(tracking_uri), MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment_id = ensure_resources(client, experiment, registered_model)
    for username, permission in RIGHTS.items():
        ensure_user(auth, username, passwords[username])
        grant(auth, username, "experiment", experiment_id, permission)
        grant(auth, username, "registered_model", registered_model, permission)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default=EXPERIMENT, help=f"params.yaml's tracking.experiment ({EXPERIMENT})")
    parser.add_argument(
        "--registered-model", default=REGISTERED_MODEL, help=f"tracking.registered_model ({REGISTERED_MODEL})"
    )
    args = parser.parse_args(argv)
    needed = ["MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", *PASSWORD_ENV.values()]
    missing = [name for name in needed if not os.environ.get(name)]
    if missing:
        print(
            f"error: set {', '.join(missing)} (the admin's credentials and the new users' passwords)", file=sys.stderr
        )
        return 2
    passwords = {user: os.environ[variable] for user, variable in PASSWORD_ENV.items()}
    set_up_team(os.environ["MLFLOW_TRACKING_URI"], passwords, args.experiment, args.registered_model)
    print(f"users {', '.join(RIGHTS)} set up: {RIGHTS} on {args.experiment!r} and {args.registered_model!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
