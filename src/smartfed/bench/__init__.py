"""Side-by-side benchmark of methods on one task (``smartfed bench``).

``variants`` names what can be compared (registered methods and SmartFed ablations),
``runner`` runs them one after the other into one folder (resumable per method), ``results``
turns the run directories into results.json / results.md (pure functions, no torch), ``sweep``
parses ``--sweep`` / ``--seeds`` (tuning on a validation slice of the training data, then the
chosen value on the test split over seeds).
"""
