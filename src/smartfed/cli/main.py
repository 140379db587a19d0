"""Entry point of the ``smartfed`` command.

Every sub-command module exposes ``register(subparsers)``; it adds its parser and sets
``func`` to a handler ``(args) -> int``. User errors (``SmartFedError``) become one line on
stderr and a non-zero exit; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from smartfed import __version__
from smartfed.cli import (
    bench_commands,
    chat_command,
    eval_command,
    export_command,
    lm_eval_command,
    pool_commands,
    run_command,
    scaffold_command,
)
from smartfed.errors import SmartFedError

COMMAND_MODULES = [
    pool_commands,
    run_command,
    eval_command,
    export_command,
    chat_command,
    lm_eval_command,
    bench_commands,
    scaffold_command,
]


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (it may be swapped, e.g. by tests)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _quiet_third_party() -> None:
    # Library chatter (telemetry notices, deprecation warnings) buries the one line that matters.
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    # PEFT reads transformers' deprecated alias; users cannot act on it.
    warnings.filterwarnings(
        "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
    )
    if not sys.stderr.isatty():  # progress bars are for people; logs and pipes get plain lines
        hf_logging.disable_progress_bar()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartfed",
        description="Federated fine-tuning by routing rank-wise experts of existing LoRA modules.",
    )
    parser.add_argument("--version", action="version", version=f"smartfed {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()  # loads $SMARTFED_PLUGINS: their flags join the parser
    except SmartFedError as exc:
        print(f"smartfed: error: {exc}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[_CurrentStderr()])
    _quiet_third_party()
    try:
        return int(args.func(args) or 0)
    except SmartFedError as exc:
        if args.debug:
            raise
        print(f"smartfed: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("smartfed: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0
    except Exception as exc:
        if args.debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(
            f"smartfed: internal error: {type(exc).__name__}: {first} "
            "(rerun with --debug for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
