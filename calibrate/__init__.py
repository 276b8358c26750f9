"""Calibration against real vLLM: launch it, profile it, fit latency profiles, check fidelity.

``python -m calibrate {serve,profile,fit,check}``; the Python API for launching
real vLLM instances is ``calibrate.serve`` (``VllmServer``, ``VllmFleet``).
"""
