"""Analysis (``l2bn analyze``): read swept studies, fit η* ∝ λ^-k and the norm laws per group
of equal training identity, export and plot. Dependencies run one way:

* :mod:`~l2bn.analysis.settings`: :class:`AnalyzeConfig`, the choices of its options;
* :mod:`~l2bn.analysis.fitted`: frozen types of the fitted numbers, their JSON form;
* :mod:`~l2bn.analysis.results`: the group and run reports, the whole JSON shape (fitted,
  settings);
* :mod:`~l2bn.analysis.fits`: the fits, NumPy/SciPy only (fitted, settings);
* k of η* ∝ λ^-k with its intervals, NumPy/SciPy only: :mod:`~l2bn.analysis.panel` (a group's
  trials as a panel) → :mod:`~l2bn.analysis.band` (the cells near each minimum) →
  :mod:`~l2bn.analysis.estimators` (the three estimators) → :mod:`~l2bn.analysis.intervals`
  (their intervals, :func:`~l2bn.analysis.intervals.estimate_k`);
* :mod:`~l2bn.analysis.loading`: studies read-only through l2bn.sweep's storage (fits);
* :mod:`~l2bn.analysis.export`: --json and --csv files (results);
* :mod:`~l2bn.analysis.plots`: --plots figures (results); :mod:`~l2bn.analysis.report`: the
  --report page (results, plots);
* :mod:`~l2bn.analysis.grouping`: which studies pool into a group (loading, results);
* :mod:`~l2bn.analysis.equilibrium`: equilibrium by measurement, θ̄ against θ_eq or the
  balance of growth and shrink over the tail of phase 1 (fitted, settings);
* :mod:`~l2bn.analysis.cells`: a group's trials as seed-averaged cells, its panel and its
  optima (fitted, loading, intervals, equilibrium);
* :mod:`~l2bn.analysis.pipeline`: the per-group analysis and the entry points (all above);
* :mod:`~l2bn.analysis.transfer`: ``l2bn transfer`` (an analysis report's k, or the theory's).

The training code is never imported, except the torch-free ``l2bn.train.config`` for the
defaults of fields that older studies lack. Rich rendering lives in :mod:`l2bn.render`.
"""
