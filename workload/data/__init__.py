"""Data files shipped with ``workload`` (see README.md here for sources and licenses)."""
