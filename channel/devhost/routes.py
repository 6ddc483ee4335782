"""Functions route templates (``{name}``, ``{*rest}``, constraints) as werkzeug rules."""

from __future__ import annotations

import re

from werkzeug.routing import BaseConverter


class _IntConverter(BaseConverter):
    """The route constraint ``int``/``long``; the value stays the string that was sent."""

    regex = r"-?\d+"


class _AlphaConverter(BaseConverter):
    """The route constraint ``alpha``."""

    regex = r"[A-Za-z]+"


class _BoolConverter(BaseConverter):
    """The route constraint ``bool``."""

    regex = r"(?i:true|false)"


class _GuidConverter(BaseConverter):
    """The route constraint ``guid``."""

    regex = r"\{?[0-9A-Fa-f]{8}-?(?:[0-9A-Fa-f]{4}-?){3}[0-9A-Fa-f]{12}\}?"


_CONVERTERS: dict[str, type[BaseConverter]] = {
    "az_int": _IntConverter,
    "az_alpha": _AlphaConverter,
    "az_bool": _BoolConverter,
    "az_guid": _GuidConverter,
}
_CONSTRAINTS = {
    "int": "az_int",
    "long": "az_int",
    "alpha": "az_alpha",
    "bool": "az_bool",
    "guid": "az_guid",
}
_PARAMETER = re.compile(r"\{([^{}]*)\}")


def route_to_rule(route_prefix: str, template: str) -> str:
    """The werkzeug rule for a Functions route template under ``route_prefix``."""
    parts: list[str] = []
    position = 0
    template = template.strip("/")
    for match in _PARAMETER.finditer(template):
        parts.append(_literal(template[position : match.start()]))
        parts.append(_parameter(match.group(1), template))
        position = match.end()
    parts.append(_literal(template[position:]))
    return _under_prefix(route_prefix, "".join(parts))


def _under_prefix(route_prefix: str, route: str) -> str:
    prefix = route_prefix.strip("/")
    return "/" + "/".join(part for part in (prefix, route.strip("/")) if part)


def _literal(text: str) -> str:
    if any(char in text for char in "<>{}"):
        raise ValueError(f"unsupported characters in route literal {text!r}")
    return text


def _parameter(spec: str, template: str) -> str:
    name, _, constraint = spec.partition(":")
    catch_all = name.startswith("*")
    name = name.lstrip("*")
    if not name.isidentifier() or "?" in spec or "=" in spec:
        raise ValueError(f"unsupported route parameter {{{spec}}} in {template!r}")
    if catch_all:
        if constraint:
            raise ValueError(f"unsupported constrained catch-all {{{spec}}} in {template!r}")
        return f"<path:{name}>"
    if not constraint:
        return f"<{name}>"
    converter = _CONSTRAINTS.get(constraint.lower())
    if converter is None:
        raise ValueError(f"unsupported route constraint {{{spec}}} in {template!r}")
    return f"<{converter}:{name}>"
