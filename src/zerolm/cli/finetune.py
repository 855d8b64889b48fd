"""`zerolm finetune`: fine-tune a pretrained model for classification, tagging or completion."""

from __future__ import annotations

from zerolm.cli.main import add_run_options, add_verb, resume_arg


def register(sub) -> None:
    p = add_verb(sub, "finetune", "fine-tune a model: classification, NER tagging (+CRF) or prompt -> "
                 "completion; full, freeze, head-only, bitfit, LoRA, adapters, prompt or prefix tuning",
                 "zerolm finetune configs/sst2_minilm.yaml strategy.name=lora train.epochs=1\n"
                 "  zerolm finetune configs/tiny/classify_reviews.yaml train.max_steps=5",
                 description="Fine-tune a model (init: a zerolm or Hugging Face directory, or "
                             "none) on labelled data: sentence (pair) classification, NER tagging (+CRF) "
                             "or prompt -> completion, training all weights or only some "
                             "(strategy.name). The run's length: train.epochs passes over the "
                             "training data; train.max_steps, when > 0, caps them (the smaller "
                             "wins) or, alone, sets it. `zerolm config show CONFIG` says which "
                             "applies.")
    p.add_argument("config", help="YAML fine-tuning config (see configs/ and configs/tiny/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides such as strategy.name=lora")
    add_run_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from zerolm.config import FinetuneConfig, load_config
    from zerolm.eval.plots import format_percent
    from zerolm.tasks import finetune_task
    from zerolm.train import dist
    from zerolm.train.finetune import finetune

    cfg = load_config(args.config, args.overrides, cls=FinetuneConfig)
    result, report = finetune(cfg, resume=resume_arg(args), overwrite=args.overwrite)
    if dist.is_main():
        s = report["strategy"]
        if result.interrupted:
            print(f"interrupted at step {result.step} of {report.get('planned_steps', '?')}; a resumable "
                  "checkpoint was saved: continue with --resume. The report below is the dev score of "
                  "the best model so far, not a final result.")
        print(f"strategy {s['strategy']}: {s['trainable']:,} of {s['total']:,} parameters trained "
              f"({format_percent(s['percent'])}); {result.step} steps in {result.wall_s:.0f} s "
              f"({report['samples_per_s']:.1f} samples/s)")
        task_cls = finetune_task(cfg.task.name)
        print(task_cls.format_report(report))
        print(f"report: {result.out_dir / 'eval.json'}   plots: {result.out_dir}/*.png   "
              f"best model: {result.out_dir / 'best'}")
    dist.teardown()
    return 0
