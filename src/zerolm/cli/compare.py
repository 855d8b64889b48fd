"""`zerolm compare`: the same fine-tuning task under several strategies, side by side."""

from __future__ import annotations

from zerolm.cli.main import add_verb


def register(sub) -> None:
    p = add_verb(sub, "compare", "fine-tune under several strategies and tabulate metric, trainable "
                 "parameters, wall time and peak memory",
                 "zerolm compare configs/sst2_minilm.yaml --strategies full,freeze,lora,adapter "
                 "lora:optim.lr=1e-3\n"
                 "  zerolm compare configs/tiny/classify_reviews.yaml --strategies full,lora "
                 "--out-dir runs/cmp train.max_steps=20",
                 description="Run `zerolm finetune CONFIG` once per strategy (each in its own "
                             "process) into DIR/<strategy>/, then write compare.md, compare.json "
                             "and compare.png into DIR, where DIR is --out-dir, or <the config's "
                             "out_dir>/compare without it. Overrides apply to every run; "
                             "STRATEGY:key=value applies to one. Finished strategies are read "
                             "back, not retrained (use --force to retrain).")
    p.add_argument("config", help="YAML fine-tuning config (see configs/ and configs/tiny/)")
    p.add_argument("overrides", nargs="*",
                   help="dotted overrides, or STRATEGY:key=value for one strategy")
    p.add_argument("--strategies", required=True,
                   help="comma-separated, e.g. full,freeze,lora,adapter,prompt")
    p.add_argument("--out-dir", default=None, metavar="DIR",
                   help="write the runs and the table here (default: <config out_dir>/compare)")
    p.add_argument("--force", action="store_true", help="retrain strategies that already have results")
    p.set_defaults(func=run)


def run(args) -> int:
    from zerolm.eval.compare import compare_root, compare_strategies, format_table, split_overrides

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    rows = compare_strategies(args.config, strategies, args.overrides, out_dir=args.out_dir,
                              force=args.force)
    print(format_table(rows))
    common, _ = split_overrides(args.overrides, strategies)
    root = compare_root(args.config, common, args.out_dir)
    print(f"\ntable: {root / 'compare.md'} (and compare.json, compare.png)")
    return 0
