"""Latency predictors over a shared feature schema (in progress)."""
