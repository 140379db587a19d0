"""``smartfed generate``: files generated from the code, so they cannot drift from it.

``smartfed generate flower-app`` rewrites the run-config tables of ``flower-app/pyproject.toml``
from the settings classes (Flower refuses ``-c`` keys the app does not declare, so the file
must list every setting); ``--check`` only reports whether the file is current.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from smartfed.errors import ConfigError

MARKER = "# ---- generated below by `smartfed generate flower-app`: edit the settings classes ----"
DEFAULT_APP = Path("flower-app") / "pyproject.toml"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help="rewrite files generated from the code")
    parser.add_argument("what", choices=["flower-app"], help="flower-app: its pyproject.toml")
    parser.add_argument("--path", default=str(DEFAULT_APP), help=f"default: {DEFAULT_APP}")
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    parser.set_defaults(func=cmd_generate)


def generated_pyproject(current: str, path: str | Path = DEFAULT_APP) -> str:
    """``current`` with everything after the marker line replaced by the generated tables."""
    from smartfed.federation.settings import flower_app_config_toml

    if MARKER not in current:
        raise ConfigError(f"{path}: no generated-section marker line ({MARKER!r})")
    head = current[: current.index(MARKER) + len(MARKER)]
    return f"{head}\n{flower_app_config_toml()}"


def cmd_generate(args: argparse.Namespace) -> int:
    path = Path(args.path)
    try:
        current = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        where = "run from the repository root or give --path"
        raise ConfigError(f"{path}: not found ({where})") from None
    wanted = generated_pyproject(current, path)
    if args.check:
        if wanted != current:
            raise ConfigError(f"{path} is stale: run `smartfed generate flower-app`")
        print(f"{path} is current")
        return 0
    if wanted != current:
        path.write_text(wanted, encoding="utf-8")
        print(f"wrote {path}")
    else:
        print(f"{path} is current")
    return 0
