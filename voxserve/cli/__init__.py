"""The ``voxserve`` command: one subcommand per module in this package.

Each command module defines ``add_parser(subparsers)``, which registers its arguments and sets ``func`` to its
``run(args) -> int``. Modules import only the standard library at the top, so ``voxserve --help`` stays fast;
heavy imports (torch, PyAV) happen inside ``run``. Errors the user can fix (bad audio, missing model, invalid
options) end the process with one clear line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Subcommand modules, in the order --help lists them.
COMMANDS = ("transcribe", "serve", "demo", "bench", "calibrate", "build", "synth", "train", "eval")

EXIT_USAGE = 2  # bad arguments or options
EXIT_INPUT = 1  # the input (audio, model, manifest) could not be used


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voxserve",
        description="Fast, dependable Whisper-family speech recognition: transcribe files, train, benchmark, "
        "serve.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is meant for the user; imported lazily (they pull in torch)."""
    from ..audio.io import AudioError
    from ..decoding.options import OptionsError
    from ..model.load import ModelLoadError

    return (AudioError, ModelLoadError, OptionsError, FileNotFoundError, IsADirectoryError, PermissionError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("voxserve: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if isinstance(e, _user_errors()):
            code = EXIT_USAGE if e.__class__.__name__ == "OptionsError" else EXIT_INPUT
            print(f"voxserve {args.command}: error: {e}", file=sys.stderr)
            return code
        raise


if __name__ == "__main__":
    sys.exit(main())
