"""Evaluation: benchmarks, answer extraction, generation and the code sandbox."""
