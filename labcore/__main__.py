"""``python -m labcore``: which modules run compiled in this environment, and why not."""
import labcore

if __name__ == "__main__":
    import routing  # noqa: F401  (installs the finder; importing sim does too)
    import sim  # noqa: F401
    for name in labcore.CANDIDATES:  # import each, so "running" says what a simulation gets
        __import__(name)
    forced = f" ({labcore.PURE_ENV} is set: pure Python forced)" if labcore.forced_pure() else ""
    print(f"compiled core{forced}; default build list: {', '.join(labcore.COMPILED) or 'none'}")
    for name, st in labcore.status().items():
        print(f"  {name:36s} build: {st['build']:9s} running: {st['running']}")
