"""The vLLM engine model, latency model, SimPy cluster and sweeps."""
import labcore as _labcore

# Before any submodule is imported: the hot modules load compiled when built and current.
_labcore.install(__name__, __path__[0])
compiled_status = _labcore.status
