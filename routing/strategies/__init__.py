"""Built-in strategies; importing this package registers them."""
from routing.strategies import heuristics  # noqa: F401
from routing.strategies import predictive  # noqa: F401
