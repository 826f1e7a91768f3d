"""Tests of l2bn.sweep, one module per module (spec, storage, study, status, worker, runner)."""
