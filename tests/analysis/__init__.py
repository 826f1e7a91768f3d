"""Tests of l2bn.analysis, one module per module (a package: no name clash with tests/train,
tests/sweep)."""
