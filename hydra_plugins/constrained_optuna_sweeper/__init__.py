"""`hydra/sweeper=constrained_optuna`: the Optuna sweeper with constraints, pruning, a device pool and a preview.

The implementation lives in the `sweeper` package; this package is what Hydra finds (the
`hydra_plugins` namespace, no registration by hand) and must stay cheap to import: Hydra imports
it at every start, single runs included.
"""
