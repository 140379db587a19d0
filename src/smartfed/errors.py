"""User-facing errors.

Every problem a user can fix (bad file, bad flag, incompatible adapter) raises a subclass of
``SmartFedError`` whose message is one line naming the file, the field and what was expected.
The CLI prints that line and exits non-zero; nothing else should reach the user as a traceback.
"""

from __future__ import annotations


class SmartFedError(Exception):
    """A problem the user can fix; the message is meant to be printed as is."""


class ConfigError(SmartFedError):
    """A configuration value or flag is invalid."""


class ModelLoadError(SmartFedError):
    """The base model could not be found or loaded."""


class PoolError(SmartFedError):
    """A LoRA pool module or manifest is missing, unreadable or incompatible."""
