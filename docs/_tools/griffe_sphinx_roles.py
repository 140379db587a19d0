"""Griffe extension: render the docstrings' Sphinx roles as inline code under mkdocstrings.

The docstrings are written for reading in the source and in ``help()``, and name other objects
with Sphinx roles (``:func:`allocate_quotas```, ``:mod:`smartfed.tuners.routing```, also with a
leading ``~``). mkdocstrings does not understand them, so this extension rewrites each role to
an inline code span of its target (``~a.b.c`` gives ``c``, as Sphinx shows it) before the
docstring is parsed. They are not turned into cross-references on purpose: many targets are
relative names that would not resolve, and an unresolved reference would fail
``mkdocs build --strict``. See docs/contributing.md.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")


def _replace(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    target = target.strip()
    if "<" in target and target.endswith(">"):  # :func:`title <target>`
        target = target.split("<", 1)[0].strip()
    elif tilde:
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def convert(text: str) -> str:
    """``text`` with every Sphinx role replaced by an inline code span of its target."""
    return ROLE.sub(_replace, text)


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
