"""`zerolm quickstart`: the whole life of a tiny model in about two minutes, offline.

Trains a byte-level BPE tokenizer on the small corpus shipped inside zerolm, pretrains a
small GPT on it, writes the loss curve, prints a generated sample and what to run next.
"""

from __future__ import annotations

import time
from pathlib import Path

from zerolm.cli.main import add_verb

QUICKSTART_CONFIG = Path(__file__).resolve().parent.parent / "resources" / "quickstart" / "quickstart.yaml"


def register(sub) -> None:
    p = add_verb(sub, "quickstart", "train a tokenizer and a tiny GPT on shipped data, then generate",
                 "zerolm quickstart --out runs/quickstart")
    p.add_argument("--out", default="runs/quickstart", help="output directory")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.max_steps=100")
    p.set_defaults(func=run)


def _is_quickstart_run(out: Path, cfg) -> bool:
    """True when `out` holds an earlier quickstart (its saved config has the quickstart's
    tokenizer and data), which may be replaced without asking."""
    import dataclasses

    import yaml

    saved = out / "config.yaml"
    if not saved.is_file():
        return False
    try:
        old = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return False
    new = dataclasses.asdict(cfg)
    return all(old.get(k) == new[k] for k in ("tokenizer", "data"))  # model: vocab set by the tokenizer


def run(args) -> int:
    from zerolm.config import load_config
    from zerolm.generate import GenerationConfig, generate_text
    from zerolm.loading import load_model
    from zerolm.train.pretrain import pretrain

    t0 = time.perf_counter()
    cfg = load_config(QUICKSTART_CONFIG, [f"out_dir={args.out}", *args.overrides])
    out = Path(cfg.out_dir)
    print(f"zerolm quickstart: training a {cfg.tokenizer.kind.upper()} tokenizer and a "
          f"{cfg.model.n_layers}-layer GPT on the shipped corpus ({cfg.train.max_steps} steps)")
    # `make demo` can be run again: an earlier quickstart's outputs are replaced, but a
    # directory holding any other run is refused (the run-directory rules apply)
    result = pretrain(cfg, overwrite=_is_quickstart_run(out, cfg))
    chosen = out / "best" if (out / "best").exists() else out / "final"  # lowest validation loss
    model, tok = load_model(chosen)
    prompt = "The river"
    sample = generate_text(model, tok, prompt, GenerationConfig(
        max_new_tokens=80, temperature=0.8, top_k=50, seed=0))
    n_params = sum(p.numel() for p in model.parameters())
    val = result.final_eval
    print()
    print("=" * 72)
    print(f"Sample (prompt {prompt!r}, temperature 0.8, top-k 50):\n")
    print(f"  {prompt}{sample}".replace("\n", "\n  "))
    print("=" * 72)
    print(f"tokenizer      {out / 'tokenizer'}  ({tok.kind}, {tok.vocab_size} tokens)")
    print(f"model          {chosen}  ({n_params:,} parameters; best by validation loss)")
    print(f"validation     loss {result.best_metric:.3f} at best (last: {val.get('loss', float('nan')):.3f}, "
          f"perplexity {val.get('perplexity', float('nan')):.1f})")
    print(f"training       {result.step} steps, {result.tokens:,} tokens in {result.wall_s:.0f} s")
    print(f"curves         {out / 'loss.png'}, {out / 'metrics.jsonl'}")
    print(f"total time     {time.perf_counter() - t0:.0f} s")
    print()
    print("Next:")
    print(f"  zerolm generate {chosen} --prompt \"The market\" --top-k 50 --seed 1")
    print(f"  zerolm eval {chosen} --input pkg:quickstart/corpus.txt")
    print(f"  zerolm pretrain {QUICKSTART_CONFIG} out_dir={out} train.max_steps=800 --resume  # train on")
    print("  zerolm pretrain configs/char_gpt_shakespeare.yaml     # real data, see README")
    return 0
