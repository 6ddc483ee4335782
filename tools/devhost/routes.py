"""Functions route templates as werkzeug rules: literals and ``{name}`` parameters."""

from __future__ import annotations

import re

_PARAMETER = re.compile(r"\{([^{}]*)\}")


def route_to_rule(route_prefix: str, template: str) -> str:
    """The werkzeug rule for a Functions route template under ``route_prefix``.

    Only what the app's routes use: ``{name}`` matches one path segment. Constraints
    (``{id:int}``), catch-alls (``{*rest}``), optional and default values are refused.
    """
    parts: list[str] = []
    position = 0
    template = template.strip("/")
    for match in _PARAMETER.finditer(template):
        parts.append(_literal(template[position : match.start()]))
        name = match.group(1)
        if not name.isidentifier():
            raise ValueError(f"unsupported route parameter {{{name}}} in {template!r}")
        parts.append(f"<{name}>")
        position = match.end()
    parts.append(_literal(template[position:]))
    return url_path(route_prefix, "".join(parts))


def url_path(route_prefix: str, route: str) -> str:
    """``route`` under ``route_prefix``, as the host shows it: ``/api/inbound/{provider}``."""
    prefix = route_prefix.strip("/")
    return "/" + "/".join(part for part in (prefix, route.strip("/")) if part)


def _literal(text: str) -> str:
    if any(char in text for char in "<>{}"):
        raise ValueError(f"unsupported characters in route literal {text!r}")
    return text
