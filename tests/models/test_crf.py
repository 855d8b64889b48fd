"""The CRF against brute force over every tag sequence, and its BIO constraints."""

import itertools

import pytest
import torch

from zerolm.models import ModelConfig, build_model
from zerolm.models.crf import CRF, bio_constraints
from zerolm.models.heads import TokenClassifier

LABELS = ["O", "B-A", "I-A", "B-B", "I-B"]


def _valid(labels, seq) -> bool:
    """IOB2 well-formedness, written independently of bio_constraints."""
    prev = "O"
    for i in seq:
        tag = labels[i]
        if tag.startswith("I-") and prev[2:] != tag[2:]:
            return False
        prev = tag
    return True


def _brute_force(crf: CRF, em: torch.Tensor, n: int, allowed):
    """Every tag sequence of length n with its score, computed from the raw parameters."""
    out = []
    for seq in itertools.product(range(crf.num_tags), repeat=n):
        if not allowed(seq):
            continue
        s = crf.start[seq[0]] + em[0, seq[0]] + crf.end[seq[-1]]
        for t in range(1, n):
            s = s + crf.transitions[seq[t - 1], seq[t]] + em[t, seq[t]]
        out.append((seq, s))
    return out


@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_viterbi_and_nll_equal_brute_force_with_padding(seed, constrained):
    g = torch.Generator().manual_seed(seed)
    C = len(LABELS)
    crf = CRF(C, bio_constraints(LABELS) if constrained else None)
    with torch.no_grad():  # scores of the order of the emissions, so transitions matter
        for p in (crf.transitions, crf.start, crf.end):
            p.copy_(torch.randn(p.shape, generator=g))
    lengths = [4, 1, 3, 2]
    B, T = len(lengths), max(lengths)
    em = torch.randn(B, T, C, generator=g) * 2
    mask = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
    em = em.masked_fill(~mask[:, :, None], 1e3)  # padding must not matter at all
    allowed = (lambda seq: _valid(LABELS, seq)) if constrained else (lambda seq: True)
    gold = torch.full((B, T), -100)
    for b, n in enumerate(lengths):  # a random gold path the constraints allow
        paths = [s for s, _ in _brute_force(crf, em[b], n, allowed)]
        gold[b, :n] = torch.tensor(paths[int(torch.randint(len(paths), (1,), generator=g))])

    decoded = crf.decode(em, mask)
    nll = crf.nll(em, gold, mask)
    with torch.no_grad():
        for b, n in enumerate(lengths):
            scored = _brute_force(crf, em[b], n, allowed)
            best = max(scored, key=lambda x: float(x[1]))[0]
            assert decoded[b] == list(best)
            log_z = torch.logsumexp(torch.stack([s for _, s in scored]), 0)
            gold_score = dict(scored)[tuple(gold[b, :n].tolist())]
            assert nll[b].item() == pytest.approx((log_z - gold_score).item(), abs=1e-4)


def test_nll_trains_the_transitions_and_is_never_negative():
    crf = CRF(len(LABELS), bio_constraints(LABELS))
    em = torch.randn(3, 5, len(LABELS), requires_grad=True)
    mask = torch.ones(3, 5, dtype=torch.bool)
    tags = torch.tensor([[0, 1, 2, 0, 3], [3, 4, 4, 0, 0], [1, 0, 1, 2, 2]])
    nll = crf.nll(em, tags, mask)
    assert (nll >= 0).all()
    nll.sum().backward()
    assert crf.transitions.grad.abs().sum() > 0 and em.grad.abs().sum() > 0


def test_constrained_decoding_never_makes_an_invalid_transition():
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    crf = CRF(len(labels), bio_constraints(labels))
    g = torch.Generator().manual_seed(0)
    em = torch.randn(64, 12, len(labels), generator=g) * 3
    em[:, :, [2, 4, 6]] += 4  # the I- tags win every position on their own
    lengths = torch.randint(1, 13, (64,), generator=g)
    mask = torch.arange(12)[None] < lengths[:, None]
    paths = crf.decode(em, mask)
    assert [len(p) for p in paths] == lengths.tolist()
    assert all(_valid(labels, p) for p in paths)
    # without the constraints the same emissions give ill-formed sequences
    free = CRF(len(labels)).decode(em, mask)
    assert not all(_valid(labels, p) for p in free)


def test_bio_constraints_forbid_exactly_the_ill_formed_moves():
    trans, start, end = bio_constraints(LABELS)
    for i, a in enumerate(LABELS):
        for j, b in enumerate(LABELS):
            ok = not b.startswith("I-") or (a != "O" and a[2:] == b[2:])
            assert bool(trans[i, j]) == ok, (a, b)
    assert start.tolist() == [True, True, False, True, False] and end.all()


def test_state_dict_holds_only_learnt_scores_and_strategies_train_the_crf():
    from zerolm.peft import apply_strategy

    crf = CRF(len(LABELS), bio_constraints(LABELS))
    assert set(crf.state_dict()) == {"transitions", "start", "end"}  # constraints follow the labels
    body = build_model(ModelConfig(family="bert", vocab_size=99, d_model=32, n_layers=2, n_heads=4,
                                   d_ff=37, max_seq_len=16))
    model = TokenClassifier(body, len(LABELS), crf=crf)
    apply_strategy(model, "head_only")
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"classifier.weight", "classifier.bias", "crf.transitions", "crf.start", "crf.end"}


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_token_classifier_scores_every_token_and_ignores_padding(family):
    body = build_model(ModelConfig(family=family, vocab_size=99, d_model=32, n_layers=2, n_heads=4,
                                   d_ff=37, max_seq_len=16, dropout=0.0))
    model = TokenClassifier(body, len(LABELS), dropout=0.0).eval()
    ids = torch.randint(5, 99, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    scores = model(ids, mask)
    assert scores.shape == (2, 7, len(LABELS)) and model.crf is None
    alone = model(ids[1:, :4], mask[1:, :4])  # the padded row, without its padding
    torch.testing.assert_close(scores[1:, :4], alone, atol=1e-5, rtol=1e-5)


def test_bad_masks_and_shapes_are_errors():
    crf = CRF(3)
    with pytest.raises(ValueError, match="at least one position"):
        crf.decode(torch.zeros(2, 3, 3), torch.tensor([[1, 1, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match=r"emissions must be \(B, T, 3\)"):
        crf.nll(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3))
