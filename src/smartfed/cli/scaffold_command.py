"""``smartfed scaffold``: files generated from the code, so they cannot drift from it.

``smartfed scaffold flower-app`` rewrites the run-config tables of ``flower-app/pyproject.toml``
from the settings classes (Flower refuses ``-c`` keys the app does not declare, so the file
must list every setting); ``--check`` only reports whether the file is current.

The command was called ``smartfed generate`` until 0.1: a name a user looking for text
generation would mistake. ``generate`` stays as a deprecated alias for one release (it prints a
deprecation line, then does the same), and a file still carrying the old marker line is
rewritten with the new one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from smartfed.errors import ConfigError

MARKER = "# ---- generated below by `smartfed scaffold flower-app`: edit the settings classes ----"
OLD_MARKER = MARKER.replace("smartfed scaffold", "smartfed generate")  # SmartFed 0.1
DEFAULT_APP = Path("flower-app") / "pyproject.toml"


def _add(subparsers: argparse._SubParsersAction, name: str, help_text: str, func) -> None:
    parser = subparsers.add_parser(name, help=help_text)
    parser.add_argument("what", choices=["flower-app"], help="flower-app: its pyproject.toml")
    parser.add_argument("--path", default=str(DEFAULT_APP), help=f"default: {DEFAULT_APP}")
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    parser.set_defaults(func=func)


def register(subparsers: argparse._SubParsersAction) -> None:
    _add(subparsers, "scaffold", "rewrite files generated from the code (flower-app)", cmd_scaffold)
    _add(subparsers, "generate", "deprecated alias of `smartfed scaffold`", cmd_generate)


def generated_pyproject(current: str, path: str | Path = DEFAULT_APP) -> str:
    """``current`` with everything after the marker line replaced by the generated tables."""
    from smartfed.federation.settings import flower_app_config_toml

    if MARKER not in current and OLD_MARKER in current:
        current = current.replace(OLD_MARKER, MARKER, 1)
    if MARKER not in current:
        raise ConfigError(f"{path}: no generated-section marker line ({MARKER!r})")
    head = current[: current.index(MARKER) + len(MARKER)]
    return f"{head}\n{flower_app_config_toml()}"


def cmd_generate(args: argparse.Namespace) -> int:
    print(
        "smartfed: `smartfed generate` is deprecated and will be removed in the next release: "
        f"use `smartfed scaffold {args.what}`",
        file=sys.stderr,
    )
    return cmd_scaffold(args)


def cmd_scaffold(args: argparse.Namespace) -> int:
    path = Path(args.path)
    try:
        current = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        where = "run from the repository root or give --path"
        raise ConfigError(f"{path}: not found ({where})") from None
    wanted = generated_pyproject(current, path)
    if args.check:
        if wanted != current:
            raise ConfigError(f"{path} is stale: run `smartfed scaffold flower-app`")
        print(f"{path} is current")
        return 0
    if wanted != current:
        path.write_text(wanted, encoding="utf-8")
        print(f"wrote {path}")
    else:
        print(f"{path} is current")
    return 0
