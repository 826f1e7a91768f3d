"""Sweeps: η×λ grids as Optuna studies (sweep files, storage, study layout, workers and the
process runner). The parent process imports no torch: workers train through l2bn.train."""
