"""The gate and what it is made of: measures (the only definitions of rel L2, cosine, top-k
agreement and accuracy), budgets (tolerances.toml), shape cases (the declared corners),
structure checks, the gate itself, explain (module by module) and the self-test (planted bugs).

measures, budgets and structure import without torch, for a target box that re-checks
artifacts on its own kernels; the gate needs eager PyTorch, its reference."""
