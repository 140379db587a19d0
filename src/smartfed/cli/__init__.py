"""The ``smartfed`` command line."""
