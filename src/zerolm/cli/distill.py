"""`zerolm distill`: teach a smaller student what a teacher model does."""

from __future__ import annotations

from zerolm.cli.main import add_run_options, add_verb, resume_arg


def register(sub) -> None:
    p = add_verb(sub, "distill", "distil a fine-tuned teacher (or a causal LM) into a smaller student",
                 "zerolm distill configs/tiny/distill_classify.yaml student.n_layers=1 distill.temperature=2",
                 description="Train a student (the teacher's task on fewer / narrower layers, initialised "
                             "from teacher layers, the bottom ones, at random or from another model) on "
                             "the teacher's soft targets and the labels, optionally matching hidden states "
                             "and attention maps (TinyBERT) or last-layer attention and value relations "
                             "(MiniLM, MiniLMv2 relations). A general stage (general.data.train) first "
                             "distils on unlabelled text with the intermediate losses, as TinyBERT; "
                             "kd_baseline=true also trains the student on the labels alone. The student "
                             "is saved as a fine-tuned model: predict, eval and zerolm.load take it. "
                             "distill.json compares it with the teacher (and kd_baseline).")
    p.add_argument("config", help="YAML distillation config (see configs/tiny/distill_*.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides such as student.n_layers=3")
    add_run_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from zerolm.config import DistillConfig, load_config
    from zerolm.train import dist
    from zerolm.train.distill import distill

    cfg = load_config(args.config, args.overrides, cls=DistillConfig)
    result, report = distill(cfg, resume=resume_arg(args), overwrite=args.overwrite)
    if dist.is_main() and result.interrupted:
        print(f"interrupted at step {result.step} in {result.out_dir}; a resumable checkpoint is kept: "
              f"run again with --resume to continue")
    elif dist.is_main() and report.get("general"):
        g = report["general"]
        best = f", best held-out loss {g['best_val_loss']:.4f}" if g.get("best_val_loss") is not None else ""
        print(f"general distillation: {g['steps']} steps{best}; student {g['student']}")
    if dist.is_main() and not result.interrupted and "metric" in report:
        m = report["metric"]
        s, t = report["student"].get(m), report["teacher"].get(m)
        print(f"student {m} {s:.4f} vs teacher {t:.4f}"
              + (f" ({100 * report['retention']:.1f}% retained)" if report.get("retention") else "")
              + f"; {report['student_params']:,} vs {report['teacher_params']:,} parameters; "
              f"{result.step} steps in {result.wall_s:.0f} s")
        if "kd_baseline" in report:
            b = report["kd_baseline"].get(m)
            gain = report.get("gain_over_kd_baseline")
            print(f"kd_baseline (same student on the labels alone) {m} {b:.4f}"
                  + (f": distillation added {gain:+.4f}" if gain is not None else ""))
        lat = report["latency"]
        timed = ", ".join(f"batch {b}: {t:.1f} vs {s_:.1f} ms ({x:.2f}x)" for b, t, s_, x in zip(
            lat["batch_sizes"], lat["teacher_ms"], lat["student_ms"], lat["speedup"]))
        print(f"latency ({lat.get('what', 'a forward pass')}) {timed}")
        print(f"student: {result.out_dir / 'best'}   report: {result.out_dir / 'distill.json'}, distill.png")
    dist.teardown()
    return 0
