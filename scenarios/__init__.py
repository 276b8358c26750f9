"""Typed, validated TOML scenarios and their grid expansion.

::

    from scenarios import load_scenario, expand_grid
    sc = load_scenario("scenarios/burst.toml", {"arrivals.peak_rate": [20, 40]})
    for point in expand_grid(sc):          # one resolved scenario per grid point
        point.point_id, point.axes, point.scenario.backend_names()

Every problem with a file (unknown key, wrong type, out-of-range or unknown
value, unknown strategy or parameter, duplicate names, a list on a key that is
not a grid axis, TOML syntax) raises ``ScenarioError`` naming the file, the key
path and what is allowed, before anything runs.
"""
from scenarios.errors import ScenarioError
from scenarios.grid import GridPoint, expand_grid, point_id
from scenarios.library import scenario_path, shipped_scenarios
from scenarios.loader import load_scenario, parse_scenario
from scenarios.overrides import parse_assignment
from scenarios.schema import (
    AXES, ArrivalSpec, ClusterSpec, GroupSpec, RouterSpec, Scenario, SloSpec, StrategySpec,
    SyntheticSpec, WorkloadSpec,
)

__all__ = [
    "AXES", "ArrivalSpec", "ClusterSpec", "GridPoint", "GroupSpec", "RouterSpec", "Scenario",
    "ScenarioError", "SloSpec", "StrategySpec", "SyntheticSpec", "WorkloadSpec", "expand_grid",
    "load_scenario", "parse_assignment", "parse_scenario", "point_id", "scenario_path",
    "shipped_scenarios",
]
