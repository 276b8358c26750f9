"""Shared by the scenario tests: a minimal valid scenario to mutate."""
from __future__ import annotations

MINIMAL = """\
name = "mini"
num_requests = 100

[workload]
source = "sharegpt"

[[cluster.groups]]
name = "h100"
count = 2
profile = "h100-llama2-70b-tp4"

[router]
strategies = ["round_robin"]
"""

