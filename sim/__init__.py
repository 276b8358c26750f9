"""The vLLM engine model, latency model, SimPy cluster and sweeps."""
