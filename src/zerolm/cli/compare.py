"""`zerolm compare`: the same fine-tuning task under several strategies, side by side."""

from __future__ import annotations

from zerolm.cli.main import add_verb


def register(sub) -> None:
    p = add_verb(sub, "compare", "fine-tune under several strategies and tabulate metric, trainable "
                 "parameters, wall time and peak memory",
                 "zerolm compare configs/sst2_minilm.yaml --strategies full,freeze,lora,adapter "
                 "lora:optim.lr=1e-3",
                 description="Run `zerolm finetune CONFIG` once per strategy (each in its own process) "
                             "into OUT/compare/<strategy>/, then write compare.md, compare.json and "
                             "compare.png there. Overrides apply to every run; STRATEGY:key=value "
                             "applies to one. Finished strategies are read back, not retrained "
                             "(use --force to retrain).")
    p.add_argument("config", help="YAML fine-tuning config")
    p.add_argument("overrides", nargs="*", help="dotted overrides, or STRATEGY:key=value for one strategy")
    p.add_argument("--strategies", required=True, help="comma-separated, e.g. full,freeze,lora,adapter,prompt")
    p.add_argument("--out-dir", default=None, help="default: the config's out_dir")
    p.add_argument("--force", action="store_true", help="retrain strategies that already have results")
    p.set_defaults(func=run)


def run(args) -> int:
    from zerolm.eval.compare import compare_strategies, format_table

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    rows = compare_strategies(args.config, strategies, args.overrides, out_dir=args.out_dir, force=args.force)
    print(format_table(rows))
    if rows:
        print(f"\ntable: {rows[0]['out_dir'].rsplit('/', 1)[0]}/compare.md (and .json, .png)")
    return 0
