"""Evaluation: benchmarks, answer extraction, generation and the code sandbox.

This package imports nothing on purpose: every sandboxed sample starts its driver with
``python -m smartfed.evaluation.sandbox_driver``, which imports ``smartfed`` and this package
first, so both must stay free of heavy imports (torch, transformers). Import the submodules.
"""
