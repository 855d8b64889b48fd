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
VERBS = ["quickstart", "tokenizer", "pretrain", "finetune", "distill", "compress", "export", "serve", "predict", "compare", "generate", "eval", "embed", "similar", "index", "convert", "config", "clean"]


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line as `main` sees it: dotted overrides may stand anywhere after the
    config, also after a verb's options (`pretrain CFG --resume train.max_steps=150`)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    return args


def add_run_options(p: argparse.ArgumentParser) -> None:
    """--resume / --resume-from / --overwrite, the same in every training verb. All three
    are flags or take their own value, so none can swallow a dotted override."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in out_dir (from scratch if it has "
                        "none)")
    g.add_argument("--resume-from", metavar="CHECKPOINT_DIR", default=None,
                   help="continue from this checkpoint directory (e.g. "
                        "RUN/checkpoints/step-00000500)")
    g.add_argument("--overwrite", action="store_true",
                   help="start afresh in a used run directory; removes its checkpoints, best/, "
                        "final/, metrics and reports")


def resume_arg(args: argparse.Namespace) -> bool | str:
    """What the training functions take as `resume`: False, True (the newest checkpoint in
    out_dir) or a checkpoint path."""
    return args.resume_from if args.resume_from else bool(args.resume)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except ZeroLMError as e:
        print(f"zerolm {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"zerolm {args.verb}: interrupted", file=sys.stderr)
        return 130


class _BarSafeHandler(logging.StreamHandler):
    """Log lines to stderr through tqdm, so a line never lands glued to a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def _setup_logging(verbose: bool) -> None:
    import os

    level = logging.DEBUG if verbose else logging.INFO
    if int(os.environ.get("RANK", "0")) > 0 and not verbose:
        level = logging.WARNING  # under torchrun, rank 0 tells the story once
    handler = _BarSafeHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=level, handlers=[handler])


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
