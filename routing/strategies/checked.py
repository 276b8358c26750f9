"""``CheckedStrategy``: a strategy whose parameters are checked by building it.

For strategies whose construction is cheap and pure, building one with the
scenario's parameters is the most faithful check there is: the scenario loader
then rejects a bad value (naming the parameter and what is allowed) before
anything runs, with the very code the run will use.
"""
from __future__ import annotations

from typing import Any

from routing.base import Strategy


class CheckedStrategy(Strategy):
    @classmethod
    def check_parameters(cls, params: dict[str, Any]) -> None:
        try:
            cls(seed=0, **params)
        except TypeError as exc:  # a value of the wrong kind reached arithmetic
            raise ValueError(f"strategy {cls.name!r}: {exc}") from None
        except ValueError as exc:
            raise ValueError(f"strategy {cls.name!r}: {exc}") from None
