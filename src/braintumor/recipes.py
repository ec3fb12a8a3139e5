"""Named recipes: a tested set of params for a kind of machine, run as one DVC experiment.

A recipe is a YAML file in `recipes/` with a `description` and the `params` it sets, as the dotted keys
`dvc exp run -S` takes. `braintumor recipe NAME` checks the recipe against params.yaml (every key must exist and
every value pass the usual checks) and runs `dvc exp run -n NAME-<time> -S key=value ...`: DVC records exactly
which params ran, `dvc exp show` compares recipes, and params.yaml keeps the recipe's values afterwards, so a later
`dvc repro` repeats it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from braintumor.config import Params, params_from_dict
from braintumor.errors import ConfigError


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    params: dict[str, Any]  # dotted key -> value, as for `dvc exp run -S`

    def apply(self, raw: dict[str, Any]) -> dict[str, Any]:
        """params.yaml's content (a dict) with this recipe's values set; the input is not changed."""
        merged = copy.deepcopy(raw)
        for key, value in self.params.items():
            *sections, leaf = key.split(".")
            node = merged
            for section in sections:
                node = node.setdefault(section, {})
            node[leaf] = value
        return merged

    def check(self, raw: dict[str, Any]) -> Params:
        """The params this recipe gives on top of `raw`, checked (ConfigError naming the recipe and the key)."""
        try:
            return params_from_dict(self.apply(raw), source=f"recipe {self.name} on params.yaml")
        except ConfigError as exc:
            raise ConfigError(f"{exc} (recipes/{self.name}.yaml)") from None

    def set_args(self) -> list[str]:
        """`-S key=value` pairs for dvc exp run; values in YAML flow style, as DVC parses them."""
        args = []
        for key, value in self.params.items():
            args += ["-S", f"{key}={_yaml_value(value)}"]
        return args


def recipes_dir(root: str | Path = ".") -> Path:
    return Path(root) / "recipes"


def list_recipes(root: str | Path = ".") -> list[Recipe]:
    return [load_recipe(p.stem, root) for p in sorted(recipes_dir(root).glob("*.yaml"))]


def load_recipe(name: str, root: str | Path = ".") -> Recipe:
    import yaml

    path = recipes_dir(root) / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(recipes_dir(root).glob("*.yaml"))) or "none"
        raise ConfigError(f"no recipe {name!r} in {recipes_dir(root)}/ (recipes: {known})")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("params"), dict) or not spec["params"]:
        raise ConfigError(f"{path}: expected a mapping with `description` and `params` (dotted keys -> values)")
    return Recipe(name=name, description=str(spec.get("description", "")).strip(), params=dict(spec["params"]))


def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value and value.strip() == value and value[0] not in "[{'\"" else json.dumps(value)
    return json.dumps(value)  # numbers, and lists in flow style: [0.5, 1.0]
