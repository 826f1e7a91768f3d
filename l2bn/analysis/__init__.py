"""Analysis (``l2bn analyze``): read swept studies, fit η* ∝ λ^-k and the norm laws per group
of equal training identity, export and plot. Dependencies run one way:

* :mod:`~l2bn.analysis.results`: settings and frozen result types, their JSON form;
* :mod:`~l2bn.analysis.fits`: the fits, NumPy/SciPy only (results);
* :mod:`~l2bn.analysis.loading`: studies read-only through l2bn.sweep's storage (fits);
* :mod:`~l2bn.analysis.export`: --json and --csv files (results);
* :mod:`~l2bn.analysis.plots`: --plots figures (results);
* :mod:`~l2bn.analysis.pipeline`: grouping, per-group analysis, the entry points (all above).

The training code is never imported, except the torch-free ``l2bn.train.config`` for the
defaults of fields that older studies lack. Rich rendering lives in :mod:`l2bn.render`.
"""
