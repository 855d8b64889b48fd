"""The T5 encoder-decoder: decoding with the cache equals the full forward, source
padding is invisible, the state-dict keys are pinned, and generation (greedy, sampled,
beam search) is batched without changing its answers; beam search returns what Hugging
Face's does on the same weights."""

import pytest
import torch
import torch.nn.functional as F

from zerolm.generate import GenerationConfig, beam_search, generate_seq2seq
from zerolm.models import ModelConfig, build_model
from zerolm.models.t5 import relative_buckets, shift_right

TINY = dict(family="t5", vocab_size=99, d_model=32, n_layers=2, n_decoder_layers=3, n_heads=4, head_dim=8,
            d_ff=37, gated_ffn=True, activation="gelu_tanh", bias=False, norm_eps=1e-6, dropout=0.0,
            attn_dropout=0.0, rel_buckets=8, rel_max_distance=20, max_seq_len=64, tie_embeddings=False)


def t5(**kw):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**{**TINY, **kw})).eval()
    if not model.config.tie_embeddings:  # logits of order 1 (not 20), where fp32 comparisons at 1e-5 are fair
        with torch.no_grad():
            model.lm_head.weight.mul_(32 ** -0.5)
    return model


def _sources():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 99, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    return ids.masked_fill(mask == 0, 0), mask


def test_state_dict_keys_are_pinned():
    model = t5(n_decoder_layers=1, n_layers=1)
    block = {f"{p}.{n}.weight" for p in ("attn", "mlp") for n in
             (("q_proj", "k_proj", "v_proj", "o_proj") if p == "attn" else ("fc_in", "fc_gate", "fc_out"))}
    enc = {"body.blocks.0." + k for k in block | {"attn_norm.weight", "mlp_norm.weight"}}
    dec = {"body.decoder.blocks.0." + k for k in block | {"attn_norm.weight", "mlp_norm.weight", "cross_norm.weight"}
           | {f"cross_attn.{n}.weight" for n in ("q_proj", "k_proj", "v_proj", "o_proj")}}
    rest = {"body.tok_emb.weight", "body.rel_pos.weight", "body.final_norm.weight", "body.decoder.rel_pos.weight",
            "body.decoder.final_norm.weight", "lm_head.weight"}
    assert set(model.state_dict()) == enc | dec | rest


@pytest.mark.parametrize("tied", [False, True])
def test_cached_decoding_equals_the_full_forward(tied):
    model = t5(tie_embeddings=tied)
    ids, mask = _sources()
    dec = torch.randint(3, 99, (3, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids, attention_mask=mask, decoder_input_ids=dec)  # (B, T, V)
        cache = model.new_cache(3, 16)
        steps = [model(ids, attention_mask=mask, decoder_input_ids=dec[:, :4], cache=cache)]  # a prefill of 4
        steps += [model(decoder_input_ids=dec[:, t:t + 1], cache=cache) for t in range(4, 9)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_source_padding_is_invisible():
    """Each row alone, unpadded, gets the logits it gets inside the padded batch: the
    encoder and the cross-attention never look at padding."""
    model = t5()
    ids, mask = _sources()
    dec = torch.randint(3, 99, (3, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        batch = model(ids, attention_mask=mask, decoder_input_ids=dec)
        for r in range(3):
            n = int(mask[r].sum())
            alone = model(ids[r:r + 1, :n], decoder_input_ids=dec[r:r + 1])
            assert torch.allclose(alone, batch[r:r + 1], atol=1e-5)
        # and what is under the padding does not matter
        noisy = ids.masked_fill(mask == 0, 42)
        assert torch.allclose(model(noisy, attention_mask=mask, decoder_input_ids=dec), batch, atol=1e-6)


def test_the_loss_is_the_cross_entropy_of_the_shifted_targets():
    model = t5()
    ids, mask = _sources()
    labels = torch.randint(3, 99, (3, 6), generator=torch.Generator().manual_seed(4))
    labels[2, 3:] = -100
    dec = shift_right(labels, model.start_id)
    assert dec[:, 0].eq(0).all() and dec[2, 4:].eq(0).all() and torch.equal(dec[0, 1:], labels[0, :-1])
    logits = model(ids, attention_mask=mask, decoder_input_ids=dec)
    ref = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert torch.allclose(model(ids, attention_mask=mask, labels=labels), ref, atol=1e-5)
    smooth = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, label_smoothing=0.1)
    assert torch.allclose(model(ids, attention_mask=mask, labels=labels, label_smoothing=0.1), smooth, atol=1e-5)


def test_relative_buckets_follow_t5():
    rel = torch.arange(-30, 31)
    bi = relative_buckets(rel, True, 8, 20)
    uni = relative_buckets(rel, False, 8, 20)
    assert bi[30] == 0 and uni[30] == 0  # the query itself
    assert set(bi[31:].tolist()) <= set(range(4, 8)) and set(bi[:30].tolist()) <= set(range(0, 4))
    assert uni[31:].eq(0).all()  # the decoder cannot see later keys: they share bucket 0
    assert uni[:30].flip(0).tolist() == sorted(uni[:30].flip(0).tolist())  # farther: same or later bucket
    assert uni[0] == 7  # beyond max_distance: the last bucket


def _greedy_loop(model, ids, mask, n: int) -> torch.Tensor:
    dec = torch.zeros(len(ids), 1, dtype=torch.long)
    with torch.no_grad():
        for _ in range(n):
            nxt = model(ids, attention_mask=mask, decoder_input_ids=dec)[:, -1].argmax(-1, keepdim=True)
            dec = torch.cat([dec, nxt], 1)
    return dec[:, 1:]


def test_greedy_generation_equals_the_uncached_loop():
    model = t5()
    ids, mask = _sources()
    out = generate_seq2seq(model, ids, GenerationConfig(max_new_tokens=8, greedy=True), attention_mask=mask)
    assert torch.equal(out, _greedy_loop(model, ids, mask, 8))


def _stop_token(model, ids, mask) -> int:
    """A token greedy decoding writes for some rows within 6 steps, to play end-of-text."""
    ref = _greedy_loop(model, ids, mask, 6)
    return int(ref[1, 2])


def test_beam_size_one_equals_greedy_and_rows_stop_at_end_of_text():
    model = t5()
    ids, mask = _sources()
    eos = _stop_token(model, ids, mask)
    greedy = generate_seq2seq(model, ids, GenerationConfig(max_new_tokens=8, greedy=True), attention_mask=mask,
                              eos_id=eos, pad_id=0)
    beam1 = beam_search(model, ids, GenerationConfig(max_new_tokens=8, num_beams=1), attention_mask=mask,
                        eos_id=eos, pad_id=0)
    assert torch.equal(greedy, beam1)
    row = greedy[1].tolist()
    assert eos in row and all(t == 0 for t in row[row.index(eos) + 1:])  # padded after its end


@pytest.mark.parametrize("options", [dict(greedy=True), dict(num_beams=3), dict(num_beams=4, length_penalty=0.6,
                                                                               no_repeat_ngram_size=2)])
def test_a_batch_generates_what_each_source_generates_alone(options):
    model = t5()
    ids, mask = _sources()
    eos = _stop_token(model, ids, mask)
    cfg = GenerationConfig(max_new_tokens=7, **options)
    batch = generate_seq2seq(model, ids, cfg, attention_mask=mask, eos_id=eos)
    for r in range(3):
        n = int(mask[r].sum())
        alone = generate_seq2seq(model, ids[r:r + 1, :n], cfg, eos_id=eos)[0].tolist()
        mine = batch[r].tolist()[:len(alone)]
        assert mine == alone and all(t == 0 for t in batch[r].tolist()[len(alone):])


def test_min_and_max_new_tokens_and_no_repeat_ngrams():
    model = t5()
    ids, mask = _sources()
    eos = _stop_token(model, ids, mask)
    out = generate_seq2seq(model, ids, GenerationConfig(max_new_tokens=6, greedy=True, min_new_tokens=5),
                           attention_mask=mask, eos_id=eos)
    assert out.shape[1] <= 6 and not out[:, :5].eq(eos).any()
    for k in (1, 3):
        rep = generate_seq2seq(model, ids, GenerationConfig(max_new_tokens=12, num_beams=2, no_repeat_ngram_size=2),
                               attention_mask=mask)
        for row in rep.tolist():
            grams = list(zip(row, row[1:]))
            assert len(grams) == len(set(grams)), (k, row)


def test_sampling_is_reproducible_with_a_seed():
    model = t5()
    ids, mask = _sources()
    cfg = GenerationConfig(max_new_tokens=6, temperature=1.0, top_k=20, seed=7)
    a = generate_seq2seq(model, ids, cfg, attention_mask=mask)
    assert torch.equal(a, generate_seq2seq(model, ids, cfg, attention_mask=mask))


@pytest.mark.parametrize("length_penalty", [1.0, 0.6, 2.0])
def test_beam_search_returns_what_hugging_face_returns(tmp_path, length_penalty):
    transformers = pytest.importorskip("transformers")
    from zerolm.convert.hf import export_hf

    model = t5(n_decoder_layers=2)  # transformers 5 sizes its default cache by the encoder's layers
    ids, mask = _sources()
    cfg = GenerationConfig(max_new_tokens=8, num_beams=4, length_penalty=length_penalty)
    eos = int(generate_seq2seq(model, ids, cfg, attention_mask=mask)[1, 2])  # a token some beam writes early
    export_hf(model, tmp_path / "hf")
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        theirs = hf.generate(input_ids=ids, attention_mask=mask, num_beams=4, max_new_tokens=8, do_sample=False,
                             length_penalty=length_penalty, eos_token_id=eos, pad_token_id=0,
                             decoder_start_token_id=0)[:, 1:]  # without the start token
    ours = generate_seq2seq(model, ids, cfg, attention_mask=mask, eos_id=eos, pad_id=0)
    def upto_eos(row):  # HF fills a finished row with end-of-text, zerolm with padding
        return row[:row.index(eos) + 1] if eos in row else row

    assert [upto_eos(r) for r in ours.tolist()] == [upto_eos(r) for r in theirs.tolist()]
