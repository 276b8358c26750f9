"""Shipped efficiency-factor sets (JSON files), see ``sim.profiles.factors``."""
