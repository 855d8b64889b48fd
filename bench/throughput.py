"""Training throughput, zerolm vs Hugging Face transformers, same configs and batches.

(a) BERT masked LM: hidden 256, 4 layers, 4 heads, ffn 1024, vocab 30522, batch 32 x 128
(b) GPT causal LM:  d 256, 4 layers, 4 heads, vocab 8192, batch 8 x 256

MFU here is hardware FLOPs utilisation: executed FLOPs (6 x params x tokens + attention,
counting only what each library computes) over the fp32 matmul peak, measured at the
start of the run on this machine (or given with --peak-gflops).

Each round times one full training step (forward, backward, AdamW) of each library in
turn, so machine noise hits both alike; figures are medians over rounds.

    python bench/throughput.py [--rounds 20] [--which bert,gpt]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from common import emit, environment, measured_matmul_peak_gflops
from zerolm.config import OptimConfig
from zerolm.data.masking import IGNORE_INDEX, mask_tokens
from zerolm.models import ModelConfig, build_model
from zerolm.tasks import CausalLMTask, MaskedLMTask
from zerolm.train.optim import build_optimizer


def bert_pair(dropout: float):
    from transformers import BertConfig, BertForMaskedLM

    cfg = ModelConfig(family="bert", vocab_size=30522, d_model=256, n_layers=4, n_heads=4, d_ff=1024,
                      max_seq_len=512, dropout=dropout, attn_dropout=dropout, pooler=False)
    ours = build_model(cfg)
    hf = BertForMaskedLM(BertConfig(vocab_size=30522, hidden_size=256, num_hidden_layers=4,
                                    num_attention_heads=4, intermediate_size=1024,
                                    hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                                    attn_implementation="sdpa"))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 30522, (32, 128), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    corrupted, labels = mask_tokens(ids, mask_id=4, vocab_size=30522, special_ids=torch.arange(5),
                                    generator=g)
    attn = torch.ones_like(ids)
    batch = {"input_ids": corrupted, "attention_mask": attn, "token_type_ids": torch.zeros_like(ids),
             "labels": labels}
    task = MaskedLMTask()

    def ours_loss():
        return task.loss(ours, batch)[0]

    def hf_loss():
        return hf(**batch).loss

    n_layer_params = 4 * (4 * 256 * 256 + 2 * 256 * 1024)
    attn = 12 * 4 * 128 * 256  # attention scores and weighted sum, forward + backward
    # executed FLOPs per token (6 x params x tokens + attention): HF projects every position
    # onto the vocabulary, zerolm only the masked ones
    masked = float((labels != IGNORE_INDEX).float().mean())
    hf_fpt = 6 * (n_layer_params + 256 * 256 + 256 * 30522) + attn
    ours_fpt = 6 * (n_layer_params + masked * (256 * 256 + 256 * 30522)) + attn
    return ours, hf, ours_loss, hf_loss, ids.numel(), (ours_fpt, hf_fpt)


def gpt_pair(dropout: float):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = ModelConfig(family="gpt", vocab_size=8192, d_model=256, n_layers=4, n_heads=4, d_ff=1024,
                      max_seq_len=256, activation="gelu_tanh", norm_eps=1e-5, dropout=dropout,
                      attn_dropout=dropout)
    ours = build_model(cfg)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=8192, n_positions=256, n_embd=256, n_layer=4, n_head=4,
                                    resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                                    attn_implementation="sdpa"))
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, 8192, (8, 257), generator=g)
    ours_batch = {"input_ids": seq[:, :-1], "labels": seq[:, 1:]}
    hf_ids = seq[:, :-1]
    hf_labels = seq[:, :-1].clone()  # HF shifts labels inside the model
    task = CausalLMTask()

    def ours_loss():
        return task.loss(ours, ours_batch)[0]

    def hf_loss():
        return hf(input_ids=hf_ids, labels=hf_labels).loss

    n_layer_params = 4 * (4 * 256 * 256 + 2 * 256 * 1024)
    fpt = 6 * (n_layer_params + 256 * 8192) + 12 * 4 * 256 * 256
    return ours, hf, ours_loss, hf_loss, hf_ids.numel(), (fpt, fpt)


def bench(name, pair, rounds, warmup, dropout, peak):
    ours, hf, ours_loss, hf_loss, tokens, (fpt_ours, fpt_hf) = pair(dropout)
    ours.train(), hf.train()
    opt_ours = build_optimizer(ours, OptimConfig(lr=1e-4))
    # HF Trainer's default optimizer: torch AdamW, decay on all but bias / LayerNorm weights
    decay = [p for n, p in hf.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    keep = [p for n, p in hf.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    opt_hf = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                {"params": keep, "weight_decay": 0.0}], lr=1e-4)

    def step(loss_fn, model, opt):
        loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t_ours, t_hf = [], []
    for r in range(warmup + rounds):
        for label, fn in (("ours", lambda: step(ours_loss, ours, opt_ours)),
                          ("hf", lambda: step(hf_loss, hf, opt_hf))):
            t = time.perf_counter()
            fn()
            dt = time.perf_counter() - t
            if r >= warmup:
                (t_ours if label == "ours" else t_hf).append(dt)
    mo, mh = statistics.median(t_ours), statistics.median(t_hf)
    res = {"bench": name, "tokens_per_step": tokens,
           "zerolm_tokens_per_s": tokens / mo, "hf_tokens_per_s": tokens / mh, "ratio": mh / mo,
           "dropout": dropout,
           "zerolm_mfu": fpt_ours * tokens / mo / (peak * 1e9), "hf_mfu": fpt_hf * tokens / mh / (peak * 1e9),
           "zerolm_step_ms": mo * 1e3, "hf_step_ms": mh * 1e3}
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--which", default="bert,gpt")
    ap.add_argument("--bert-dropout", type=float, default=0.1, help="BERT's usual 0.1")
    ap.add_argument("--gpt-dropout", type=float, default=0.0, help="0 as in nanoGPT pretraining")
    ap.add_argument("--peak-gflops", type=float, default=None,
                    help="fp32 matmul peak for MFU; default: measured now (best 2048^3 sgemm)")
    args = ap.parse_args()
    if args.peak_gflops is None:
        args.peak_gflops = measured_matmul_peak_gflops()
    print(f"fp32 matmul peak: {args.peak_gflops:.0f} GFLOP/s")
    torch.manual_seed(0)
    results = []
    pairs = {"bert_mlm": bert_pair, "gpt_clm": gpt_pair}
    for key in args.which.split(","):
        name = {"bert": "bert_mlm", "gpt": "gpt_clm"}[key]
        dropout = args.bert_dropout if key == "bert" else args.gpt_dropout
        results.append(bench(name, pairs[name], args.rounds, args.warmup, dropout, args.peak_gflops))
    rows = [[r["bench"], f"{r['zerolm_tokens_per_s']:,.0f}", f"{r['hf_tokens_per_s']:,.0f}",
             f"{r['ratio']:.2f}x", f"{100 * r['zerolm_mfu']:.1f}%", f"{100 * r['hf_mfu']:.1f}%"]
            for r in results]
    emit(rows, ["config", "zerolm tok/s", "HF tok/s", "ratio", "zerolm HFU", "HF HFU"],
         {"throughput": results, "env": environment(), "rounds": args.rounds,
          "peak_gflops": args.peak_gflops})


if __name__ == "__main__":
    main()
