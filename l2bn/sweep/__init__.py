"""Sweeps: η×λ grids as Optuna studies. spec (sweep files), storage, study (layout and queue),
status (each point's state), worker (one process's lifecycle) and runner (the processes of
one node). The parent process imports no torch: workers train through l2bn.train."""
