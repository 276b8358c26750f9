"""Calibration against a real vLLM: serve, profile, fit, check (in progress)."""
