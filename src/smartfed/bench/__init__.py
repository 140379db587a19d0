"""Side-by-side benchmark of methods on one task (``smartfed bench``).

``variants`` names what can be compared (registered methods and SmartFed ablations),
``runner`` runs them one after the other into one folder (resumable per method), ``results``
turns the run directories into results.json / results.md (pure functions, no torch).
"""
