"""The one error type a bad scenario raises, always before anything runs.

Its message names where the problem is (file and key path, e.g.
``cluster.groups[1].count``), what is wrong, and what would be accepted, so a
user can fix the file without reading this package.
"""
from __future__ import annotations

from workload.tables import SchemaError


class ScenarioError(SchemaError):
    """A scenario file (or an override) is invalid.

    ``source`` is the file (or ``"<string>"``), ``key`` the dotted key path
    (``""`` for file-level problems such as TOML syntax) and ``problem`` the
    explanation including the allowed values.
    """

    def __init__(self, key: str, problem: str, source: str = "") -> None:
        self.key = key
        self.problem = problem
        self.source = source
        ValueError.__init__(self, self._text())

    def _text(self) -> str:
        where = ": ".join(part for part in (self.source, self.key) if part)
        return f"{where}: {self.problem}" if where else self.problem

    def with_source(self, source: str) -> ScenarioError:
        """The same error, located in ``source``."""
        return ScenarioError(self.key, self.problem, source)

    def __reduce__(self):  # keep picklable across processes (sweep workers)
        return (ScenarioError, (self.key, self.problem, self.source))
