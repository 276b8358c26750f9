"""Typed, validated TOML scenarios and their grid expansion."""
