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


class StorageError(SmartFedError):
    """The storage refused a write (no space, no permission, read-only file system)."""


class DamagedFileError(SmartFedError):
    """A file SmartFed wrote earlier (a run's files) is missing, unreadable or damaged."""


class RunDirectoryBusy(SmartFedError):
    """Another process is writing the run directory."""
