"""Moved to tests/sweep/. Kept only because tests/test_bad_inputs.py imports TINY from here."""

from sweep.helpers import TINY

__all__ = ["TINY"]
