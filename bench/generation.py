"""Generation speed with and without the KV cache (greedy, 256 new tokens).

The cached and uncached outputs must be identical; the table reports tokens/s, medians
over repetitions.

    python bench/generation.py [--new 256] [--repeats 3] [--model DIR]
"""

from __future__ import annotations

import argparse

import torch

from common import emit, environment, median_time
from zerolm.generate import GenerationConfig, generate_ids
from zerolm.models import CausalLM, ModelConfig


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", help="a trained zerolm model directory (default: random GPT-2-shaped weights)")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.model:
        from zerolm.loading import load_model

        model, _ = load_model(args.model)
    else:
        model = CausalLM(ModelConfig(family="gpt", vocab_size=8192, d_model=256, n_layers=4, n_heads=4, d_ff=1024,
                                max_seq_len=512, activation="gelu_tanh", norm_eps=1e-5)).eval()
    prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt_len))
    outs, rows, rec = {}, [], {}
    for name, cache in (("KV cache", True), ("no cache", False)):
        cfg = GenerationConfig(max_new_tokens=args.new, greedy=True, use_cache=cache)
        generate_ids(model, prompt, GenerationConfig(max_new_tokens=8, greedy=True, use_cache=cache))  # warm-up
        t = median_time(lambda cfg=cfg, name=name: outs.__setitem__(name, generate_ids(model, prompt, cfg)),
                        args.repeats)
        tps = args.new / t
        rows.append([name, f"{tps:,.1f}", f"{t:.2f}"])
        rec[name] = tps
    same = torch.equal(outs["KV cache"], outs["no cache"])
    emit(rows, ["decoding", "tokens/s", "seconds"],
         {"bench": "generation", "new_tokens": args.new, "kv_cache_tokens_per_s": rec["KV cache"],
          "no_cache_tokens_per_s": rec["no cache"], "speedup": rec["KV cache"] / rec["no cache"],
          "identical_outputs": same, "env": environment()})


if __name__ == "__main__":
    main()
