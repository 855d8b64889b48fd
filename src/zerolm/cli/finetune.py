"""`zerolm finetune`: fine-tune a pretrained model for classification, tagging or completion."""

from __future__ import annotations

from zerolm.cli.main import add_verb


def register(sub) -> None:
    p = add_verb(sub, "finetune", "fine-tune a model: classification, NER tagging (+CRF) or prompt -> "
                 "completion; full, freeze, head-only, bitfit, LoRA, adapters, prompt or prefix tuning",
                 "zerolm finetune configs/sst2_minilm.yaml strategy.name=lora train.epochs=1")
    p.add_argument("config", help="YAML fine-tuning config (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides such as strategy.name=lora")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in out_dir")
    p.set_defaults(func=run)


def run(args) -> int:
    from zerolm.config import FinetuneConfig, load_config
    from zerolm.train import dist
    from zerolm.train.finetune import finetune, task_module

    cfg = load_config(args.config, args.overrides, cls=FinetuneConfig)
    result, report = finetune(cfg, resume=args.resume)
    if dist.is_main():
        s = report["strategy"]
        print(f"strategy {s['strategy']}: {s['trainable']:,} of {s['total']:,} parameters trained "
              f"({s['percent']:.2f}%); {result.step} steps in {result.wall_s:.0f} s "
              f"({report['samples_per_s']:.1f} samples/s)")
        print(task_module(cfg.task.name).format_report(report))
        print(f"report: {result.out_dir / 'eval.json'}   plots: {result.out_dir}/*.png   "
              f"best model: {result.out_dir / 'best'}")
    dist.teardown()
    return 0
