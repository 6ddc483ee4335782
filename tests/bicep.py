"""The Bicep templates under infra/, parsed with pycep-parser, and a small evaluator.

pycep gives each file as JSON: parameters, variables, resources, modules, outputs, with
expressions as nested ``{"operator": ...}`` / ``{"function": ...}`` objects. Identifiers
and string literals are both plain strings there, so a string naming a parameter,
variable, resource or module of the file is read as a reference to it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from pycep import BicepParser

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"
_INTERPOLATION = re.compile(r"\$\{([^}]*)\}")


@cache
def parse(path: Path) -> dict[str, Any]:
    """One Bicep file as pycep's JSON."""
    parsed: dict[str, Any] = json.loads(json.dumps(BicepParser().parse(file_path=path)))
    return parsed


def bicep_files() -> list[Path]:
    """Every Bicep file under infra/."""
    return sorted(INFRA.rglob("*.bicep"))


def config(entry: dict[str, Any]) -> dict[str, Any]:
    """A resource's or module's body, looking through an ``if (...)`` condition."""
    body: dict[str, Any] = entry["config"]
    if "condition" in body and "config" in body:
        inner: dict[str, Any] = body["config"]
        return inner
    return body


def condition(entry: dict[str, Any]) -> Any:
    """The ``if (...)`` condition of a resource or module, or None."""
    return entry["config"].get("condition")


def resources(path: Path, type_: str | None = None) -> dict[str, dict[str, Any]]:
    """The resources of a file (of one type), by symbolic name."""
    found: dict[str, dict[str, Any]] = parse(path).get("resources", {})
    return {name: r for name, r in found.items() if type_ is None or r["type"] == type_}


def module_of(path: Path) -> tuple[str, dict[str, Any]]:
    """The module entry of main.bicep that deploys ``path``: (symbolic name, entry)."""
    for name, entry in parse(MAIN).get("modules", {}).items():
        if (MAIN.parent / entry["detail"]["path"]).resolve() == path.resolve():
            return name, entry
    raise LookupError(f"main.bicep deploys no module from {path}")


def parameters_file() -> dict[str, str]:
    """main.parameters.json: each parameter's azd environment expression, e.g. ``${NAME}``."""
    data = json.loads((INFRA / "main.parameters.json").read_text())
    return {name: entry["value"] for name, entry in data["parameters"].items()}


def azd_name(parameter: str) -> tuple[str, str | None]:
    """The azd environment variable a main.bicep parameter reads, and its inline default."""
    match = re.fullmatch(r"\$\{([A-Z0-9_]+)(?:=([^}]*))?\}", parameters_file()[parameter])
    assert match, f"main.parameters.json: {parameter} is not a single ${{NAME}}"
    return match.group(1), match.group(2)


def walk(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every node of a parsed expression with its path of keys."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, (*path, str(key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, (*path, str(index)))


def mentions(node: Any, name: str) -> bool:
    """True when an expression refers to ``name`` (as an identifier or inside ``${}``)."""
    token = re.compile(rf"(?<![\w.]){re.escape(name)}(?!\w)")
    for _, value in walk(node):
        if value == name:
            return True
        if isinstance(value, str) and any(
            token.search(inner) for inner in _INTERPOLATION.findall(value)
        ):
            return True
    return False


class Unresolved(Exception):
    """An expression the evaluator does not know how to evaluate."""


@dataclass
class Deployment:
    """Evaluates main.bicep and its modules for one azd environment.

    ``env`` holds the azd environment (``azd env set`` values); ``outputs`` what Azure
    returns for a resource's or module's property, keyed by ``(file stem, dotted path)``,
    e.g. ``("storage", "account.properties.primaryEndpoints.table")``, or a variable's
    value the evaluator cannot compute, e.g. ``("main", "resourceToken")``.
    """

    env: Mapping[str, str]
    outputs: Mapping[tuple[str, str], str] = field(default_factory=dict)

    def parameter(self, path: Path, name: str) -> Any:
        """A parameter's value: from the azd environment (main) or the module call."""
        declared = parse(path)["parameters"][name]
        if path == MAIN:
            variable, inline_default = azd_name(name)
            raw = self.env.get(variable) or inline_default
            if raw:
                return {"bool": raw.lower() == "true"}.get(declared["type"], raw)
            if declared["default"] is not None:
                return self.eval(path, declared["default"])
            raise Unresolved(f"{variable} is required (main.bicep {name} has no default)")
        _, module = module_of(path)
        params = config(module)["params"]
        if name in params:
            return self.eval(MAIN, params[name])
        if declared["default"] is not None:
            return self.eval(path, declared["default"])
        raise Unresolved(f"main.bicep passes no {name} to {path.name}")

    def variable(self, path: Path, name: str) -> Any:
        """A variable's value (or the one given in ``outputs``, e.g. a uniqueString)."""
        if (path.stem, name) in self.outputs:
            return self.outputs[(path.stem, name)]
        return self.eval(path, parse(path)["variables"][name]["value"])

    def eval(self, path: Path, node: Any) -> Any:  # noqa: PLR0911, PLR0912
        """The value of an expression in ``path``."""
        parsed = parse(path)
        if isinstance(node, bool | int) or node is None:
            return node
        if isinstance(node, str):
            if node in parsed.get("parameters", {}):
                return self.parameter(path, node)
            if node in parsed.get("variables", {}):
                return self.variable(path, node)
            return _INTERPOLATION.sub(lambda m: str(self._inline(path, m.group(1))), node)
        if isinstance(node, dict) and "operator" in node:
            op = node["operator"]
            kind, operands = op["type"], op["operands"]
            if kind == "conditional":
                chosen = (
                    operands["true_value"]
                    if self.eval(path, operands["condition"])
                    else operands["false_value"]
                )
                return self.eval(path, chosen)
            if kind == "not":
                return not self.eval(path, operands["bool_value"])
            if kind == "and":
                return self.eval(path, operands["operand_1"]) and self.eval(
                    path, operands["operand_2"]
                )
            if kind == "property_accessor":
                return self._property(path, _dotted(node))
            raise Unresolved(f"operator {kind}")
        if isinstance(node, dict) and "function" in node:
            fn = node["function"]
            kind, args = fn["type"], fn["parameters"]
            if kind == "empty":
                return not self.eval(path, args["item_to_test"])
            if kind == "union":
                merged: dict[str, Any] = {}
                for arg in args.values():
                    merged.update(self.eval(path, arg))
                return merged
            raise Unresolved(f"function {kind}")
        if isinstance(node, dict):
            return {key: self.eval(path, value) for key, value in node.items()}
        raise Unresolved(repr(node))

    def _inline(self, path: Path, expression: str) -> Any:
        """An identifier or a dotted property inside ``${...}``."""
        if re.fullmatch(r"\w+", expression):
            return self.eval(path, expression)
        return self._property(path, expression)

    def _property(self, path: Path, dotted: str) -> Any:
        key = (path.stem, dotted)
        if key in self.outputs:
            return self.outputs[key]
        symbol, _, rest = dotted.partition(".")
        modules = parse(path).get("modules", {})
        if symbol in modules and rest.startswith("outputs."):
            target = (path.parent / modules[symbol]["detail"]["path"]).resolve()
            output = parse(target)["outputs"][rest.removeprefix("outputs.")]
            return self.eval(target, output["value"])
        raise Unresolved(f"no value given for {key}")


def _dotted(node: Any) -> str:
    """``a.b.c`` from pycep's nested property accessors."""
    if isinstance(node, str):
        return node
    operands = node["operator"]["operands"]
    return f"{_dotted(operands['operand_1'])}.{_dotted(operands['operand_2'])}"
