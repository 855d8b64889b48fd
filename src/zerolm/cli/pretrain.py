"""`zerolm pretrain`: masked-LM or causal-LM pretraining from a YAML config."""

from __future__ import annotations

from zerolm.cli.main import add_run_options, add_verb, resume_arg


def register(sub) -> None:
    p = add_verb(sub, "pretrain", "pretrain a model with self-supervision (causal LM or masked LM)",
                 "zerolm pretrain configs/char_gpt_shakespeare.yaml train.max_steps=500 "
                 "out_dir=runs/shakes\n"
                 "  zerolm pretrain configs/char_gpt_shakespeare.yaml --resume "
                 "train.max_steps=3000\n"
                 "  torchrun --standalone --nproc_per_node 2 -m zerolm.cli.main pretrain "
                 "configs/tiny/gpt_char.yaml")
    p.add_argument("config", help="YAML run config (see configs/ and configs/tiny/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides such as train.max_steps=100")
    add_run_options(p)
    p.add_argument("--init", metavar="MODEL_DIR", help="start from these weights instead of random ones")
    p.set_defaults(func=run)


def run(args) -> int:
    from zerolm.config import load_config
    from zerolm.train import dist
    from zerolm.train.pretrain import pretrain

    cfg = load_config(args.config, args.overrides)
    result = pretrain(cfg, resume=resume_arg(args), overwrite=args.overwrite, init=args.init)
    if dist.is_main():
        ev = ", ".join(f"{k} {v:.4f}" for k, v in result.final_eval.items() if isinstance(v, float))
        if result.interrupted:
            print(f"interrupted at step {result.step} of {cfg.train.max_steps} after {result.wall_s:.1f} s; "
                  f"a resumable checkpoint was saved: continue with --resume")
            if ev:
                print(f"last validation before the interruption (not a final result): {ev}")
        elif result.fit_train_s == 0 and result.step >= cfg.train.max_steps:
            print(f"the run had already finished at step {result.step}: nothing to train (raise "
                  "train.max_steps to train on)")
        else:
            print(f"trained to step {result.step} in {result.wall_s:.1f} s ({result.tokens:,} tokens "
                  "seen in all)" + (" - stopped early" if result.stopped_early else ""))
            if ev:
                print(f"validation: {ev}")
        print(f"model: {result.out_dir / 'final'}   metrics: {result.out_dir / 'metrics.jsonl'}   "
              f"loss curve: {result.out_dir / 'loss.png'}")
    dist.teardown()
    return 0
