"""Distilling an encoder-decoder (T5): the word-level loss equals its naive form on full
logits, a student copies chosen blocks of both stacks, and `zerolm distill` turns the tiny
translator into a smaller one that loads, decodes and is reported against the teacher
(BLEU, latency of greedy decoding) and against kd_baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import zerolm
from zerolm.config import DistillConfig, DistillLossConfig, load_config
from zerolm.distill.objective import Distilled, DistillObjective
from zerolm.distill.student import initialise, student_config
from zerolm.errors import ConfigError
from zerolm.models import ModelConfig, build_model
from zerolm.models.heads import IGNORE_INDEX
from zerolm.models.t5 import shift_right
from zerolm.tasks.seq2seq import Seq2SeqTask
from zerolm.train.distill import distill

REPO = Path(__file__).resolve().parents[2]
TINY = dict(family="t5", vocab_size=99, d_model=32, n_layers=2, n_decoder_layers=3, n_heads=4, head_dim=8,
            d_ff=37, gated_ffn=True, activation="gelu_tanh", bias=False, norm_eps=1e-6, dropout=0.0,
            attn_dropout=0.0, rel_buckets=8, rel_max_distance=20, max_seq_len=64)


def t5(seed: int, **kw):
    torch.manual_seed(seed)
    return build_model(ModelConfig(**{**TINY, **kw})).eval()


def batch():
    g = torch.Generator().manual_seed(3)
    src = torch.randint(3, 99, (3, 9), generator=g)
    mask = torch.ones_like(src)
    mask[2, 4:] = 0
    labels = torch.randint(3, 99, (3, 7), generator=g)
    labels[1, 5:] = IGNORE_INDEX
    return {"input_ids": src.masked_fill(mask == 0, 0), "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("tied, smoothing", [(True, 0.0), (False, 0.0), (True, 0.1)])
def test_the_word_level_loss_equals_its_naive_form(tied, smoothing):
    teacher, student = t5(0, tie_embeddings=tied), t5(1, tie_embeddings=tied, n_layers=1, n_decoder_layers=1)
    w = DistillLossConfig(hard=0.7, soft=1.3, temperature=2.0)
    b = batch()
    t_out = DistillObjective(teacher, Seq2SeqTask(), "seq2seq", w).teacher_outputs(b)
    total, parts = Distilled(student.train(), "seq2seq", w, [], 32, label_smoothing=smoothing)(
        b["input_ids"], b["attention_mask"], labels=b["labels"], teacher=t_out)
    dec = shift_right(b["labels"], 0)
    s_logits = student(b["input_ids"], attention_mask=b["attention_mask"], decoder_input_ids=dec)
    with torch.no_grad():
        t_logits = teacher(b["input_ids"], attention_mask=b["attention_mask"], decoder_input_ids=dec)
    keep = b["labels"] != IGNORE_INDEX
    hard = F.cross_entropy(s_logits[keep], b["labels"][keep], label_smoothing=smoothing)  # as the task trains
    T = 2.0
    soft = F.kl_div(F.log_softmax(s_logits[keep] / T, -1), F.log_softmax(t_logits[keep] / T, -1),
                    log_target=True, reduction="batchmean") * T * T
    torch.testing.assert_close(parts["hard_loss"], hard.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts["soft_loss"], soft.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(total.detach(), (0.7 * hard + 1.3 * soft).detach(), rtol=1e-5, atol=1e-5)


def test_a_student_copies_chosen_blocks_of_both_stacks():
    teacher = t5(0)
    cfg = student_config(teacher.config, {"n_layers": 1, "n_decoder_layers": 2})
    assert (cfg.n_layers, cfg.decoder_layers) == (1, 2)
    assert student_config(teacher.config, {"n_layers": 1}).decoder_layers == 1  # 0: as many as the encoder
    student = build_model(cfg)
    said = initialise(student, teacher, "teacher_layers")
    assert "blocks [0]" in said and "decoder blocks [0, 2]" in said
    sd, td = student.state_dict(), teacher.state_dict()
    for s_name, t_name in [("body.blocks.0.attn.q_proj.weight", "body.blocks.0.attn.q_proj.weight"),
                           ("body.decoder.blocks.1.cross_attn.k_proj.weight", "body.decoder.blocks.2.cross_attn.k_proj.weight"),
                           ("body.decoder.blocks.1.mlp.fc_gate.weight", "body.decoder.blocks.2.mlp.fc_gate.weight"),
                           ("body.decoder.rel_pos.weight", "body.decoder.rel_pos.weight"),
                           ("lm_head.weight", "lm_head.weight")]:
        assert torch.equal(sd[s_name], td[t_name]), s_name
    with pytest.raises(ValueError, match="set student.n_decoder_layers to at most 3"):
        initialise(build_model(student_config(teacher.config, {"n_layers": 2, "n_decoder_layers": 4})), teacher,
                   "bottom")
    with pytest.raises(ValueError, match="no decoder stack"):
        student_config(build_model(ModelConfig(family="bert", vocab_size=99, d_model=32, n_layers=2, n_heads=4,
                                               d_ff=37, max_seq_len=64)).config, {"n_decoder_layers": 1})


@pytest.fixture(scope="module")
def translator(tiny_run) -> Path:
    return tiny_run("seq2seq_translate.yaml", "train.max_steps=40") / "best"


def cfg(teacher: Path, out: Path, *over: str) -> DistillConfig:
    return load_config(REPO / "configs" / "tiny" / "distill_translate.yaml",
                       [f"teacher={teacher}", f"out_dir={out}", "train.progress=false", *over], cls=DistillConfig)


def test_a_translator_distils_into_a_smaller_one_with_kd_baseline(translator, tmp_path):
    _, report = distill(cfg(translator, tmp_path / "d", "kd_baseline=true"))
    saved = json.loads((tmp_path / "d" / "distill.json").read_text())
    assert saved["metric"] == "bleu" and 0 <= saved["student"]["bleu"] <= 100 and "bleu" in saved["teacher"]
    assert saved["student_params"] < saved["teacher_params"] and "bleu" in saved["kd_baseline"]
    assert saved["latency"]["what"] == "greedy decoding of the targets" and all(
        x > 0 for x in saved["latency"]["student_ms"])
    rows = [json.loads(x) for x in (tmp_path / "d" / "metrics.jsonl").read_text().splitlines()]
    assert any("soft_loss" in r and "hard_loss" in r for r in rows)
    student = zerolm.load(tmp_path / "d" / "best")
    assert student.is_seq2seq and student.model.config.n_layers == 1 and student.model.config.decoder_layers == 1
    out = student.generate(["A man is eating in the snow."], num_beams=2)
    assert isinstance(out[0], str)


def test_intermediate_losses_are_refused_for_an_encoder_decoder(translator, tmp_path):
    with pytest.raises(ConfigError, match="distill.hidden: a seq2seq student"):
        distill(cfg(translator, tmp_path / "d", "distill.hidden=1.0"))
    assert not (tmp_path / "d" / "metrics.jsonl").exists()
