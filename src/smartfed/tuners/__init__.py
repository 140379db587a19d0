"""Tuners that wrap a Hugging Face causal LM (PEFT-style config / layer / model per method)."""
