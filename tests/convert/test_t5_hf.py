"""Hugging Face T5 interop: tiny random T5 v1.0 / v1.1 checkpoints convert both ways with
equal logits (source padding included), exact weights, and token-equal greedy decoding."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")

from zerolm.convert.hf import export_hf, load_hf, untrained_heads  # noqa: E402
from zerolm.errors import CheckpointError  # noqa: E402
from zerolm.loading import load_model  # noqa: E402
from zerolm.models import ModelConfig, build_model  # noqa: E402

# odd sizes catch transposed or mis-split weights; 24 source positions reach past
# max_distance 20, so the encoder uses every bucket, the last (far) one included
TINY_T5 = dict(vocab_size=99, d_model=32, d_kv=8, num_heads=4, d_ff=37, num_layers=2, num_decoder_layers=3,
               relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0,
               pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
VERSIONS = {
    "v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),  # own LM head, no output scale
    "v1.0": dict(feed_forward_proj="relu", tie_word_embeddings=True),  # head = embeddings, scaled output
}

# An untied head drawn with T5's std 1 gives logits near 20, where fp32 rounding alone
# (HF's GELU-tanh formula against torch's fused one) reaches 1e-5; std d_model**-0.5
# gives logits of the size a tied head gives (about 4), as the 1e-5 bound assumes.
HEAD_STD = 32 ** -0.5


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 99, (3, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    mask[2, 5:] = 0
    ids = ids.masked_fill(mask == 0, 0)  # padded with the pad id, as a tokenizer would
    dec = torch.randint(2, 99, (3, 7), generator=g)
    dec[:, 0] = 0  # the decoder starts from the pad token
    return ids, mask, dec


def _perturb(model):
    """Make every weight matter: HF starts norms at one, and so does zerolm."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)


def _hf_t5(path, version):
    torch.manual_seed(0)
    hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**TINY_T5, **VERSIONS[version]))
    if version == "v1.1":  # a head of its own, as google/t5-v1_1-* checkpoints have
        hf.lm_head.weight = torch.nn.Parameter(torch.randn(99, 32) * HEAD_STD)
    _perturb(hf)
    hf.save_pretrained(path)
    return hf.eval()


def _hf_logits(hf, ids, mask, dec):
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits


def _ours_logits(model, ids, mask, dec):
    with torch.no_grad():
        return model(ids, attention_mask=mask, decoder_input_ids=dec)


@pytest.mark.parametrize("version", list(VERSIONS))
def test_hf_t5_to_zerolm_and_back_gives_equal_logits(tmp_path, version):
    hf = _hf_t5(tmp_path / "hf", version)
    ids, mask, dec = _batch()
    ours, tok = load_hf(tmp_path / "hf")
    assert tok is None and ours.config.family == "t5" and ours.config.tie_embeddings == (version == "v1.0")
    ref = _hf_logits(hf, ids, mask, dec)
    assert (_ours_logits(ours, ids, mask, dec) - ref).abs().max() <= 1e-5
    with torch.no_grad():  # the encoder alone (the body's forward), on real source tokens
        h = hf.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        assert (ours.encode(ids, mask) - h)[mask.bool()].abs().max() <= 1e-5

    export_hf(ours, tmp_path / "back")
    cfg = json.loads((tmp_path / "back" / "config.json").read_text())
    assert cfg["architectures"] == ["T5ForConditionalGeneration"]
    assert cfg["feed_forward_proj"] == VERSIONS[version]["feed_forward_proj"]
    again = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
    assert (_hf_logits(again, ids, mask, dec) - ref).abs().max() <= 1e-5
    # the weights themselves: HF's file -> zerolm -> HF's file, tensor for tensor
    before, after = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert sorted(after) == sorted(before)
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("gated,activation,tied", [(True, "gelu_tanh", False), (False, "relu", True),
                                                   (True, "gelu", True), (False, "gelu_tanh", False)])
def test_zerolm_t5_exports_to_hf_and_back_exactly(tmp_path, gated, activation, tied):
    torch.manual_seed(0)
    cfg = ModelConfig(family="t5", vocab_size=99, d_model=32, n_layers=2, n_decoder_layers=3, n_heads=4,
                      head_dim=8, d_ff=37, rel_buckets=8, rel_max_distance=20, gated_ffn=gated,
                      activation=activation, tie_embeddings=tied, bias=False, dropout=0.0, attn_dropout=0.0,
                      norm_eps=1e-6)
    ours = build_model(cfg).eval()
    if not tied:
        with torch.no_grad():
            ours.lm_head.weight.mul_(HEAD_STD)
    _perturb(ours)
    ids, mask, dec = _batch()
    export_hf(ours, tmp_path / "hf")
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    assert (_hf_logits(hf, ids, mask, dec) - _ours_logits(ours, ids, mask, dec)).abs().max() <= 1e-5
    back, _ = load_hf(tmp_path / "hf")
    assert back.config == cfg
    own, again = ours.state_dict(), back.state_dict()
    assert sorted(again) == sorted(own)
    assert all(torch.equal(again[k], own[k]) for k in own)


def _greedy(model, ids, mask, max_new: int, eos: int | None) -> torch.Tensor:
    """Greedy decoding, one token per step through the cache: the start token, then the
    argmax; a row that produced eos continues with padding (as HF's generate pads it)."""
    B = ids.shape[0]
    cache = model.new_cache(B, max_new + 1)
    enc = model.encode(ids, mask)
    tok = torch.full((B, 1), model.start_id)
    out, done = [tok], torch.zeros(B, dtype=torch.bool)
    for step in range(max_new):
        logits = model(attention_mask=mask, decoder_input_ids=tok, encoder_states=enc if step == 0 else None,
                       cache=cache)  # (B, 1, V)
        nxt = logits[:, -1].argmax(-1).masked_fill(done, model.config.pad_id)
        done |= nxt == eos
        tok = nxt[:, None]
        out.append(tok)
        if done.all():
            break
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("version", list(VERSIONS))
def test_greedy_generation_is_token_equal_to_hf_generate(tmp_path, version):
    hf = _hf_t5(tmp_path / "hf", version)
    ours, _ = load_hf(tmp_path / "hf")
    export_hf(ours, tmp_path / "back")  # decoder start and eos come from our config.json alone
    again = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
    ids, mask, _ = _batch()
    with torch.no_grad():
        free = _greedy(ours, ids, mask, 30, eos=None)
        # eos: a token the most varied row writes at step 3, so that a row stops early
        # (and is padded) while others go on
        row = max(range(len(free)), key=lambda r: len(set(free[r].tolist())))
        eos = int(free[row, 3])
        mine = _greedy(ours, ids, mask, 30, eos)
        for model in (hf, again):
            # transformers 5.24 sizes generate's default cache by num_layers (the encoder's):
            # with a deeper decoder it fails unless given a cache that grows on demand
            cache = transformers.EncoderDecoderCache(transformers.DynamicCache(), transformers.DynamicCache())
            theirs = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1,
                                    max_new_tokens=30, eos_token_id=eos, cache=cache)
            assert torch.equal(theirs, mine), (theirs, mine)
    assert (mine == eos).any(dim=1).sum() >= 1 and mine.shape[1] > 5


def test_a_scaled_output_through_a_head_of_its_own_is_folded(tmp_path):
    """transformers 5 loads tie_word_embeddings true with a separate lm_head: the output
    is scaled by d_model**-0.5 and then goes through that head. zerolm folds the scale into
    an untied head."""
    hf = _hf_t5(tmp_path / "hf", "v1.0")
    f = tmp_path / "hf" / "model.safetensors"
    sd = load_file(f)
    sd["lm_head.weight"] = torch.randn(99, 32)
    save_file(sd, f, metadata={"format": "pt"})
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    assert hf.lm_head.weight.data_ptr() != hf.shared.weight.data_ptr() and hf.config.scale_decoder_outputs
    ours, _ = load_hf(tmp_path / "hf")
    assert not ours.config.tie_embeddings
    ids, mask, dec = _batch()
    assert (_ours_logits(ours, ids, mask, dec) - _hf_logits(hf, ids, mask, dec)).abs().max() <= 1e-5


def test_cli_converts_t5_both_ways(tmp_path, capsys):
    from zerolm.cli.main import main

    hf = _hf_t5(tmp_path / "hf", "v1.1")
    assert main(["convert", "--from", "hf", str(tmp_path / "hf"), str(tmp_path / "z")]) == 0
    assert "wrote zerolm t5 model" in capsys.readouterr().out
    ours, _ = load_model(tmp_path / "z")
    ids, mask, dec = _batch()
    ref = _hf_logits(hf, ids, mask, dec)
    assert (_ours_logits(ours, ids, mask, dec) - ref).abs().max() <= 1e-5
    assert main(["convert", "--to", "hf", str(tmp_path / "z"), str(tmp_path / "back")]) == 0
    again = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "back").eval()
    assert (_hf_logits(again, ids, mask, dec) - ref).abs().max() <= 1e-5
    direct, _ = load_model(tmp_path / "hf")  # zerolm.load reads the HF directory as it is
    assert torch.equal(_ours_logits(direct, ids, mask, dec), _ours_logits(ours, ids, mask, dec))


def test_t5_encoder_model_loads_with_a_fresh_decoder(tmp_path):
    torch.manual_seed(0)
    enc = transformers.T5EncoderModel(transformers.T5Config(**TINY_T5, **VERSIONS["v1.1"]))
    _perturb(enc)
    enc.save_pretrained(tmp_path / "enc")
    ours, _ = load_hf(tmp_path / "enc")
    ids, mask, _ = _batch()
    with torch.no_grad():
        ref = enc.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
        assert (ours.encode(ids, mask) - ref)[mask.bool()].abs().max() <= 1e-5
    assert untrained_heads(tmp_path / "enc") == ["decoder (and LM head)"]
    _hf_t5(tmp_path / "full", "v1.0")
    assert untrained_heads(tmp_path / "full") == []


def test_what_t5_cannot_express_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"the t5 family has no biases.*model.bias: false"):
        ModelConfig(family="t5", vocab_size=99, d_model=32, n_layers=2, n_heads=4, d_ff=37, bias=True)

    _hf_t5(tmp_path / "hf", "v1.0")
    path = tmp_path / "hf" / "config.json"
    good = json.loads(path.read_text())
    path.write_text(json.dumps({**good, "feed_forward_proj": "gated-silu"}))
    with pytest.raises(CheckpointError, match=r"config.json: unsupported activation 'silu'"):
        load_hf(tmp_path / "hf")
    path.write_text(json.dumps({**good, "decoder_start_token_id": 5}))
    with pytest.raises(CheckpointError, match=r"decoder_start_token_id 5 differs from pad_token_id 0"):
        load_hf(tmp_path / "hf")
    path.write_text(json.dumps({**good, "d_ff": 40}))
    with pytest.raises(CheckpointError, match=r"shape mismatch for '\w+coder.block.\d.layer.\d.DenseReluDense.wi.weight'"):
        load_hf(tmp_path / "hf")
