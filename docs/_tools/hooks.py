"""MkDocs hook: links from docs/ to files elsewhere in the repository.

The pages link to files outside ``docs/`` (``../benchmarks/results/claims.md``,
``../README.md``, ``../tests/plugins/toy_method.py``) with ordinary relative links, so they work
when the Markdown is read on a code host. MkDocs cannot serve those files, and ``--strict``
fails on links it cannot resolve, so before a page is rendered this hook checks that each such
target exists in the repository (a missing one fails the build) and rewrites the link to the
file in the repository (``repo_url``): ``blob/main/<path>`` for a file, ``tree/main/<path>`` for
a folder.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.exceptions import PluginError

LINK = re.compile(r"(\]\()(\.\./[^)\s#]+)(#[^)\s]*)?(\))")
BRANCH = "main"


def on_page_markdown(markdown, page, config, files):
    docs_dir = Path(config["docs_dir"]).resolve()
    root = docs_dir.parent
    page_dir = (docs_dir / page.file.src_uri).parent
    repo = (config.get("repo_url") or "").rstrip("/")

    def rewrite(match: re.Match[str]) -> str:
        opening, target, anchor, closing = match.groups()
        path = (page_dir / target).resolve()
        if path.is_relative_to(docs_dir):
            return match.group(0)  # a page of the site: MkDocs checks it
        if not path.is_relative_to(root) or not path.exists():
            raise PluginError(f"{page.file.src_uri}: link to a missing file: {target}")
        kind = "tree" if path.is_dir() else "blob"
        url = f"{repo}/{kind}/{BRANCH}/{path.relative_to(root).as_posix()}"
        return f"{opening}{url}{anchor or ''}{closing}"

    return LINK.sub(rewrite, markdown)
