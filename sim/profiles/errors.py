"""The one error of profile derivation: bad input, named with the allowed values."""
from __future__ import annotations


class DeriveError(ValueError):
    """A model, device, data type or parallelism that cannot be derived (says what is allowed)."""
