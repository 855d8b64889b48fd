"""Hugging Face interop: tiny random checkpoints round-trip HF -> zerolm -> HF exactly."""

import dataclasses
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from zerolm.convert.hf import export_hf, load_hf  # noqa: E402
from zerolm.errors import CheckpointError  # noqa: E402
from zerolm.loading import load_model  # noqa: E402

TINY_BERT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=37, max_position_embeddings=64, type_vocab_size=2,
                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
TINY_GPT2 = dict(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_inner=37, n_positions=64,
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 99, (3, 13), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    types = torch.zeros_like(ids)
    types[:, 7:] = 1
    return ids, mask, types


def _bert_hf(tmp_path):
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(transformers.BertConfig(**TINY_BERT)).eval()
    with torch.no_grad():  # HF inits some biases to zero: make every weight matter
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    hf.save_pretrained(tmp_path / "hf_bert")
    return hf


def test_bert_hf_to_zerolm_to_hf_is_exact(tmp_path):
    hf = _bert_hf(tmp_path)
    ids, mask, types = _batch()
    ours, _ = load_hf(tmp_path / "hf_bert")
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        out = ours(ids, attention_mask=mask, token_type_ids=types)
    real = mask.bool()
    assert (out.mlm_logits - ref.prediction_logits)[real].abs().max() <= 1e-5
    assert (out.sentence_logits - ref.seq_relationship_logits).abs().max() <= 1e-5
    export_hf(ours, tmp_path / "back")
    for cls in (transformers.BertForPreTraining, transformers.BertForMaskedLM, transformers.BertModel):
        again = cls.from_pretrained(tmp_path / "back").eval()
        with torch.no_grad():
            o = again(input_ids=ids, attention_mask=mask, token_type_ids=types)
        if cls is transformers.BertModel:
            h = hf.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
            assert (o.last_hidden_state - h)[real].abs().max() <= 1e-5
        else:
            logits = o.prediction_logits if hasattr(o, "prediction_logits") else o.logits
            assert (logits - ref.prediction_logits)[real].abs().max() <= 1e-5


@pytest.mark.parametrize("activation", ["gelu_new", "gelu"])
def test_gpt2_hf_to_zerolm_to_hf_is_exact(tmp_path, activation):
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**TINY_GPT2, activation_function=activation)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    hf.save_pretrained(tmp_path / "hf_gpt")
    ids, _, _ = _batch()
    ours, _ = load_hf(tmp_path / "hf_gpt")
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
        assert (ours(ids) - ref).abs().max() <= 1e-5
    export_hf(ours, tmp_path / "back")
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        assert (again(input_ids=ids).logits - ref).abs().max() <= 1e-5


def test_zerolm_trained_model_exports_with_its_tokenizer(tmp_path):
    from zerolm.cli.main import main

    out = tmp_path / "run"
    assert main(["pretrain", "configs/tiny/gpt_bpe.yaml", f"out_dir={out}", "train.max_steps=2"]) == 0
    assert main(["convert", "--to", "hf", str(out / "final"), str(tmp_path / "hf")]) == 0
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours, our_tok = load_model(out / "final")
    text = "The river runs"
    ids = torch.tensor([our_tok.encode(text)])
    assert tok(text)["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        assert (hf(input_ids=ids).logits - ours(ids)).abs().max() <= 1e-5
    # and back again through the CLI
    assert main(["convert", "--from", "hf", str(tmp_path / "hf"), str(tmp_path / "z")]) == 0
    z, _ = load_model(tmp_path / "z")
    with torch.no_grad():
        assert torch.equal(z(ids), ours(ids))


def test_bin_weights_are_read_with_weights_only(tmp_path):
    hf = _bert_hf(tmp_path)
    d = tmp_path / "bin"
    d.mkdir()
    (d / "config.json").write_text((tmp_path / "hf_bert" / "config.json").read_text())
    torch.save(hf.state_dict(), d / "pytorch_model.bin")
    ours, _ = load_hf(d)
    ids, mask, types = _batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).prediction_logits
        assert (ours(ids, mask, types).mlm_logits - ref)[mask.bool()].abs().max() <= 1e-5

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_hf(d)


def test_errors_name_the_file_and_key(tmp_path):
    _bert_hf(tmp_path)
    d = tmp_path / "hf_bert"
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "bart", "architectures": ["BartModel"]}))
    with pytest.raises(CheckpointError, match=r"config.json: unsupported architecture model_type='bart'"):
        load_hf(d)
    (d / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 40}))
    with pytest.raises(CheckpointError, match=r"model.safetensors: shape mismatch for 'bert.encoder.layer.0.intermediate.dense.(weight|bias)'"):
        load_hf(d)
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weight file"):
        load_hf(d)


def test_pretrain_can_start_from_a_hugging_face_directory(tmp_path):
    from zerolm.config import load_config
    from zerolm.train.pretrain import pretrain

    first = pretrain(load_config("configs/tiny/gpt_bpe.yaml", [f"out_dir={tmp_path / 'a'}", "train.max_steps=3"]))
    ours, tok = load_model(first.out_dir / "final")
    export_hf(ours, tmp_path / "hf", tokenizer=tok)
    cfg = load_config("configs/tiny/gpt_bpe.yaml", [f"out_dir={tmp_path / 'b'}", "train.max_steps=1",
                                                   f"tokenizer.path={first.out_dir / 'tokenizer'}",
                                                   "schedule.warmup_steps=0"])
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=0.0))  # configs refuse lr 0
    res = pretrain(cfg, init=str(tmp_path / "hf"))
    again, _ = load_model(res.out_dir / "final")
    ids = torch.tensor([tok.encode("The river")])
    with torch.no_grad():
        assert (again(ids) - ours(ids)).abs().max() <= 1e-6  # lr 0: the imported weights, unchanged
