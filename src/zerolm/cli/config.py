"""`zerolm config show`: print a config after defaults and overrides are applied."""

from __future__ import annotations

from zerolm.cli.main import add_verb


def register(sub) -> None:
    p = add_verb(sub, "config", "show a resolved config (defaults + file + overrides)",
                 "zerolm config show configs/char_gpt_shakespeare.yaml train.max_steps=100")
    csub = p.add_subparsers(dest="action", metavar="ACTION")
    csub.required = True
    show = csub.add_parser("show", help="print the resolved config as YAML",
                           epilog="example:\n  zerolm config show configs/tiny_gpt.yaml model.n_layers=2",
                           formatter_class=p.formatter_class)
    show.add_argument("config", nargs="?", help="YAML pretraining or fine-tuning config (omit for the "
                      "pretraining defaults)")
    show.add_argument("overrides", nargs="*", help="dotted overrides such as model.d_model=64")
    show.set_defaults(func=run)


def run(args) -> int:
    from zerolm.config import RunConfig, dump_config, load_config

    if args.config is None:
        cfg = RunConfig()
    else:
        cfg = load_config(args.config, args.overrides)
    print(dump_config(cfg), end="")
    return 0
