"""The `zerolm` command: one thin module per verb, no training logic here.

Each verb module defines `register(subparsers)`, which adds its parser and sets
`func=run` where `run(args) -> int` is the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from zerolm.errors import ZeroLMError

# verb module names under zerolm.cli, in the order `zerolm --help` lists them
VERBS = ["quickstart", "tokenizer", "pretrain", "finetune", "predict", "compare", "generate", "eval", "embed", "similar", "convert", "config"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zerolm",
        description="Build, pretrain, fine-tune and use Transformer language models.",
        epilog="Run `zerolm VERB --help` for a verb's options and an example.",
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for name in VERBS:
        importlib.import_module(f"zerolm.cli.{name}").register(sub)
    return parser


def _version() -> str:
    from zerolm import __version__

    return f"zerolm {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # dotted overrides may also follow a verb's options (`... --strategies a,b x.y=1`)
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args) or 0)
    except ZeroLMError as e:
        print(f"zerolm {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"zerolm {args.verb}: interrupted", file=sys.stderr)
        return 130


def add_verb(sub, name: str, help: str, example: str, description: str | None = None):
    """A verb's parser with its example shown in `--help`."""
    return sub.add_parser(
        name,
        help=help,
        description=description or help,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


if __name__ == "__main__":
    sys.exit(main())
