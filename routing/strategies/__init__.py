"""Built-in strategies; importing this package registers them."""
from routing.strategies import cache_affinity  # noqa: F401
from routing.strategies import heuristics  # noqa: F401
from routing.strategies import kv_cost  # noqa: F401
from routing.strategies import predictive  # noqa: F401
from routing.strategies import sessions  # noqa: F401
from routing.strategies import weighted  # noqa: F401
