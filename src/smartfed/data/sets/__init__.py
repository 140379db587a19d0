"""Built-in datasets: one module per dataset, each registering itself on import.

To add a dataset, write ``sets/<name>.py`` with a reader decorated by
:func:`smartfed.data.registry.register_dataset` and import it below.
"""

from smartfed.data.sets import gsm8k, instruct

__all__ = ["gsm8k", "instruct"]
