"""Side-by-side step time: zerolm's GPT vs a nanoGPT-layout reference on nanoGPT's CPU
config (4 layers, 4 heads, d 128, block 64, batch 12, char vocab 65), same machine, same
process, alternating steps. The reference is written here from nanoGPT's published
architecture (fused qkv projection, bias-free LayerNorm/Linear, exact GELU, tied head,
foreach AdamW) so the comparison needs no download.

    python bench/nanogpt_step.py [--steps 60]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from common import emit, environment
from zerolm.config import OptimConfig
from zerolm.models import ModelConfig, build_model
from zerolm.tasks import CausalLMTask
from zerolm.train.optim import build_optimizer

V, D, L, H, T, B = 65, 128, 4, 4, 64, 12


class RefBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(D, bias=False)
        self.c_attn = nn.Linear(D, 3 * D, bias=False)
        self.c_proj = nn.Linear(D, D, bias=False)
        self.ln_2 = nn.LayerNorm(D, bias=False)
        self.c_fc = nn.Linear(D, 4 * D, bias=False)
        self.mlp_proj = nn.Linear(4 * D, D, bias=False)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(D, dim=2)
        q, k, v = (z.view(b, t, H, D // H).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, D)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class RefGPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, D), nn.Embedding(T, D)
        self.h = nn.ModuleList(RefBlock() for _ in range(L))
        self.ln_f = nn.LayerNorm(D, bias=False)
        self.lm_head = nn.Linear(D, V, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for blk in self.h:
            x = blk(x)
        return self.lm_head(self.ln_f(x))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = ModelConfig(family="gpt", vocab_size=V, d_model=D, n_layers=L, n_heads=H, d_ff=4 * D, max_seq_len=T,
                      bias=False, dropout=0.0, attn_dropout=0.0, norm_eps=1e-5, tie_embeddings=False)
    ours, ref = build_model(cfg), RefGPT()  # the GPT with its LM head, as pretraining builds it
    opt_o = build_optimizer(ours, OptimConfig(lr=1e-3, weight_decay=0.1, betas=[0.9, 0.99]))
    decay = [p for p in ref.parameters() if p.dim() >= 2]
    keep = [p for p in ref.parameters() if p.dim() < 2]
    opt_r = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": keep, "weight_decay": 0.0}],
                              lr=1e-3, betas=(0.9, 0.99))
    task = CausalLMTask()
    seq = torch.randint(0, V, (B, T + 1))
    batch = {"input_ids": seq[:, :-1], "labels": seq[:, 1:]}

    # both sides clip the global gradient norm to 1.0, as each real loop does by default
    # (nanoGPT's grad_clip, zerolm's train.clip_grad): the same work on each side
    def step_ours():
        loss, _ = task.loss(ours, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
        opt_o.step()
        opt_o.zero_grad(set_to_none=True)

    def step_ref():
        loss = F.cross_entropy(ref(batch["input_ids"]).flatten(0, 1), batch["labels"].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt_r.step()
        opt_r.zero_grad(set_to_none=True)

    t_o, t_r = [], []
    for i in range(args.steps + 10):
        for fn, ts in ((step_ours, t_o), (step_ref, t_r)):
            t = time.perf_counter()
            fn()
            if i >= 10:
                ts.append(time.perf_counter() - t)
    mo, mr = statistics.median(t_o), statistics.median(t_r)
    emit([["zerolm (char config)", f"{mo * 1e3:.1f}"], ["nanoGPT-layout reference", f"{mr * 1e3:.1f}"]],
         ["model", "ms/step"],
         {"bench": "nanogpt_step", "zerolm_ms": mo * 1e3, "reference_ms": mr * 1e3, "ratio": mr / mo,
          "env": environment()})


if __name__ == "__main__":
    main()
