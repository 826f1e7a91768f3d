"""Analysis (``l2bn analyze``): read swept studies, estimate k and the norm laws per group of
equal training identity, present them. Three subpackages, one concept each, depending one way
(reading → estimating → presenting), around the shared types:

* :mod:`~l2bn.analysis.settings` (:class:`AnalyzeConfig`), :mod:`~l2bn.analysis.fitted` (the
  frozen fitted numbers) and :mod:`~l2bn.analysis.results` (the group and run reports, the JSON
  shape);
* :mod:`l2bn.analysis.reading`: studies into plain records. ``records`` (the trial and study
  records, their histories; no optuna), ``studies`` (an Optuna storage, read-only and in bulk),
  ``csvfile`` (a ``--csv`` export read back), ``grouping`` (which studies pool);
* :mod:`l2bn.analysis.estimating`: NumPy/SciPy on numbers. The primary k, the whole-surface
  collapse (``collapse`` on ``template``, its curve), the floor estimators as cross-checks
  (``panel`` → ``band`` → ``floor``), the cluster intervals both use (``intervals``), cells and
  optima (``cells``), equilibrium by stationarity (``equilibrium``), the norm laws and the
  column test (``norms``), small statistics (``stats``), the measured relaxation
  (``relaxation``);
* :mod:`l2bn.analysis.presenting`: ``export`` (--json, --csv), ``plots`` (--plots), ``report``
  (--report); rich tables live in :mod:`l2bn.render`.

:mod:`~l2bn.analysis.pipeline` runs them per group; :mod:`~l2bn.analysis.transfer` is
``l2bn transfer``; :mod:`~l2bn.analysis.calibration` plants studies that look like real ones
to calibrate the primary. The training code is never imported, except the torch-free
``l2bn.train.config`` for the defaults of fields that older studies lack.
"""
