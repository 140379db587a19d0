"""Built-in datasets: one module per dataset, each registering itself on import.

To add a dataset, write ``sets/<name>.py`` with a reader decorated by
:func:`smartfed.data.registry.register_dataset` and import it below.
"""

from smartfed.data.sets import (
    doit,
    gsm8k,
    gsm8k_pal,
    gsm_hard,
    gsm_hard_gsm8k_pal,
    humaneval,
    instruct,
    math23k,
    mbpp,
    mgsm,
    mgsm_zh_math23k,
    paper_pool,
    zh_code,
)

__all__ = [
    "doit",
    "gsm8k",
    "gsm8k_pal",
    "gsm_hard",
    "gsm_hard_gsm8k_pal",
    "humaneval",
    "instruct",
    "math23k",
    "mbpp",
    "mgsm",
    "mgsm_zh_math23k",
    "paper_pool",
    "zh_code",
]
