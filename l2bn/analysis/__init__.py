"""Analysis: read studies through l2bn.sweep's storage layer, fit η* ∝ λ^-k and the norm laws,
export and plot. Never imports the training code."""
