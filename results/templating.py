"""HTML from Jinja2 templates, escaped by default.

Reports are pages of tables: the Python side computes what goes in each cell (as
text) and a template under ``<package>/templates/`` lays it out. Autoescaping is
on, so any value from a run (a strategy label, a scenario file, an error) is shown
as text; only fragments this project writes itself (a validation section, the
Vega bundle, chart specs made script-safe) are marked safe, in the template.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jinja2


@functools.lru_cache(maxsize=None)
def environment(folder: str) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(folder), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters["script_json"] = script_json
    return env


def render(folder: str | Path, name: str, **context: Any) -> str:
    """Template ``name`` of ``folder`` rendered with ``context``."""
    return environment(str(folder)).get_template(name).render(**context)


def script_json(value: Any) -> str:
    """JSON that is safe inside a ``<script>`` element: no ``</`` can close it."""
    return json.dumps(value, allow_nan=False, default=str).replace("</", "<\\/")


__all__ = ["environment", "render", "script_json"]
