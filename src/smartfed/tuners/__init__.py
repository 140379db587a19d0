"""Tuners that wrap a Hugging Face causal LM (PEFT-style config / layer / model per method).

``base`` holds the shared plumbing (config base, injection / unload, trainable state,
fingerprinted save / load), ``experts`` the frozen pool experts and their grouping by module,
``routing`` the router designs and top-K gating; ``more``, ``mole`` and ``lorahub`` each add only
their grouping, config and layer.
"""
