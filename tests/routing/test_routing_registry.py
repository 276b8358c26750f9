"""The registry: build by TOML name, clear errors naming the allowed values."""
from __future__ import annotations

import pytest

import routing
from routing.base import Strategy, register
from routing_helpers import HEURISTICS


def test_every_heuristic_is_registered_and_builds_by_name():
    assert set(HEURISTICS) <= set(routing.available())
    assert routing.available() == sorted(routing.available())
    for name in HEURISTICS:
        s = routing.build(name, seed=7)
        assert isinstance(s, Strategy) and s.name == name and s.seed == 7
        assert routing.parameters(name) == {}


def test_unknown_strategy_names_the_available_ones():
    with pytest.raises(ValueError) as info:
        routing.build("least_loaded")
    message = str(info.value)
    assert "unknown strategy 'least_loaded'" in message
    for name in HEURISTICS:
        assert name in message


def test_unknown_parameter_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"strategy 'random' has no parameter 'temperature'; allowed: \(none\)"):
        routing.build("random", temperature=1.0)
    with pytest.raises(ValueError, match="no parameter 'seed'"):
        routing.validate("random", {"seed": 1})  # the seed comes from the run, not the file


def test_parameters_of_a_parameterised_strategy(monkeypatch):
    class Scaled(Strategy):
        name = "test_scaled"

        def __init__(self, *, seed: int = 0, alpha: float = 0.5, model: str | None = None) -> None:
            super().__init__(seed=seed)
            self.alpha = alpha

        def choose(self, request, backends):
            return 0

    monkeypatch.setitem(routing.base._REGISTRY, Scaled.name, Scaled)
    assert routing.parameters("test_scaled") == {"alpha": 0.5, "model": None}
    assert routing.build("test_scaled", alpha=2.0).alpha == 2.0
    with pytest.raises(ValueError, match="allowed: alpha, model"):
        routing.validate("test_scaled", {"beta": 1})


def test_register_refuses_nameless_and_clashing_classes(monkeypatch):
    class Nameless(Strategy):
        pass

    with pytest.raises(TypeError, match="non-empty `name`"):
        register(Nameless)

    class Clash(Strategy):
        name = "round_robin"

    with pytest.raises(ValueError, match="registered twice"):
        register(Clash)
    assert routing.base.strategy_class("round_robin") is not Clash


def test_missing_required_parameter_is_named(monkeypatch):
    class NeedsModel(Strategy):
        name = "test_needs_model"

        def __init__(self, *, model: str, seed: int = 0) -> None:
            super().__init__(seed=seed)
            self.model = model

        def choose(self, request, backends):
            return 0

    monkeypatch.setitem(routing.base._REGISTRY, NeedsModel.name, NeedsModel)
    assert routing.base.required_parameters("test_needs_model") == ["model"]
    with pytest.raises(ValueError, match="strategy 'test_needs_model' needs parameter\\(s\\) model"):
        routing.validate("test_needs_model", {})
    assert routing.build("test_needs_model", model="m.json").model == "m.json"
