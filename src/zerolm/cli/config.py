"""`zerolm config show`: print a config after defaults and overrides are applied."""

from __future__ import annotations

from zerolm.cli.main import add_verb

EXAMPLE = "zerolm config show configs/tiny/gpt_char.yaml model.n_layers=2 train.max_steps=100"


def register(sub) -> None:
    p = add_verb(sub, "config", "show a resolved config (defaults + file + overrides)", EXAMPLE)
    csub = p.add_subparsers(dest="action", metavar="ACTION")
    csub.required = True
    show = add_verb(csub, "show", "print the resolved config as YAML; for a fine-tuning config, a "
                    "last comment line says whether train.epochs or train.max_steps sets the run's "
                    "length", EXAMPLE)
    show.add_argument("config", nargs="?", help="YAML pretraining or fine-tuning config (omit for the "
                      "pretraining defaults)")
    show.add_argument("overrides", nargs="*", help="dotted overrides such as model.d_model=64")
    show.set_defaults(func=run)


def run(args) -> int:
    from zerolm.config import (
        FinetuneConfig,
        RunConfig,
        describe_finetune_length,
        dump_config,
        load_config,
    )

    cfg = RunConfig() if args.config is None else load_config(args.config, args.overrides)
    if isinstance(cfg, FinetuneConfig):
        from zerolm.train.finetune import check_names

        check_names(cfg)  # names live in the task and strategy registries
    print(dump_config(cfg), end="")
    if isinstance(cfg, FinetuneConfig):
        print(f"# {describe_finetune_length(cfg.train)}")
    return 0
