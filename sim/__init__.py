"""The vLLM engine model, latency model, SimPy cluster and sweeps."""
try:
    import labcore as _labcore
except ModuleNotFoundError:  # an editable install made before labcore existed maps only the
    _labcore = None  # packages it knew: nothing compiled can be loaded, the .py files run
if _labcore is not None:
    # Before any submodule is imported: the hot modules load compiled when built and current.
    _labcore.install(__name__, __path__[0])


def compiled_status() -> dict[str, dict[str, str]]:
    """Per compiled-core candidate module: build state and what runs (``labcore.status``)."""
    if _labcore is None:
        raise RuntimeError("labcore is not importable: this editable install predates it; "
                           "rerun pip install -e . to map it")
    return _labcore.status()
