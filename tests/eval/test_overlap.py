"""BLEU equals sacrebleu's and ROUGE equals rouge-score's, on fixed and random text."""

import random

import pytest

from zerolm.eval.overlap import ROUGE_TYPES, _tokenize_13a, corpus_bleu, rouge, sentence_bleu

sacrebleu = pytest.importorskip("sacrebleu")
rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")

# (hypotheses, references) where references[i] is hypothesis i's reference, or list of them
CORPORA = {
    "plain": (["the cat sat on the mat", "a dog barked loudly at the postman"],
              ["the cat is sitting on the mat", "the dog barked at the postman"]),
    "punctuation": (['He said: "No!" (twice), then left.', "It's 3.14, or 1,000-2,000 km/h?",
                     "Prices rose 5% in 1990-2000; see [1] & {2} <tag>.", "e.g. U.S.A. - yes"],
                    ['He said: "no!" (twice) and left.', "It is 3.14 or 1,000 - 2,000 km/h.",
                     "Prices rose by 5% in 1990-2000; see [1] &amp; {2} &lt;tag&gt;.",
                     "e.g. U.S.A. -- yes"]),
    "numbers": (["In 2023, 1,234 people paid $5.50 each.", "Call 555-1234 at 10:30."],
                ["In 2023 1,234 people paid $5.50 each.", "Call 555-1234 at 10:30 am."]),
    "german": (["Der Bär läuft über die Straße, größer als Müller.",
                "Öffentliche Verkehrsmittel sind schön – oder?"],
               ["Der Bär lief über die Straße und war größer als Müller.",
                "Die öffentlichen Verkehrsmittel sind schön, oder nicht?"]),
    "multi_ref": (["the quick brown fox jumps over the lazy dog", "hello there world",
                   "it is a guide to action which ensures that the military always obeys"],
                  [["a quick brown fox jumped over a lazy dog", "the fast brown fox leaps over "
                    "the lazy dog", "quick fox"],
                   ["hello world", "hello there, my world!"],
                   ["it is a guide to action that ensures that the military will forever heed",
                    "it is the guiding principle which guarantees the military forces always",
                    "it is the practical guide for the army always to heed the directions"]]),
    "empty_hypothesis": (["", "some words here", ""], ["a reference", "some words there", "x"]),
    "short": (["a b", "c"], ["a b c", "c d"]),  # no 3- or 4-grams at all
    "no_match": (["alpha beta gamma delta"], ["one two three four"]),
    "newlines": (["first line-\nsecond part\nthird", "ends with a dash-\n"],
                 ["first linesecond part third", "ends with a dash-"]),
}


def _ref_streams(refs):
    """Our per-hypothesis references as sacrebleu's reference streams (None: no ref)."""
    lists = [[r] if isinstance(r, str) else list(r) for r in refs]
    width = max(map(len, lists))
    return [[r[k] if k < len(r) else None for r in lists] for k in range(width)]


def _assert_bleu(ours: dict, ref, counts: bool = True) -> None:
    assert ours["bleu"] == pytest.approx(ref.score, abs=1e-6)
    assert ours["precisions"] == pytest.approx(ref.precisions, abs=1e-6)
    assert ours["bp"] == pytest.approx(ref.bp, abs=1e-9)
    assert (ours["sys_len"], ours["ref_len"]) == (ref.sys_len, ref.ref_len)
    if counts:  # sacrebleu's add-k adds k to its counts; ours stay the observed ones
        assert ours["counts"] == list(ref.counts) and ours["totals"] == list(ref.totals)


@pytest.mark.parametrize("name", list(CORPORA))
@pytest.mark.parametrize("tokenize,lowercase", [("13a", False), ("13a", True), ("none", False)])
def test_corpus_bleu_equals_sacrebleu(name, tokenize, lowercase):
    hyps, refs = CORPORA[name]
    ref = sacrebleu.corpus_bleu(hyps, _ref_streams(refs), tokenize=tokenize, lowercase=lowercase)
    _assert_bleu(corpus_bleu(hyps, refs, tokenize=tokenize, lowercase=lowercase), ref)


@pytest.mark.parametrize("smooth", ["exp", "floor", "add-k", "none"])
def test_bleu_smoothing_methods_equal_sacrebleu(smooth):
    for hyps, refs in CORPORA.values():
        ref = sacrebleu.corpus_bleu(hyps, _ref_streams(refs), smooth_method=smooth)
        _assert_bleu(corpus_bleu(hyps, refs, smooth=smooth), ref, counts=smooth != "add-k")
        for h, r in zip(hyps, refs):
            r = [r] if isinstance(r, str) else r
            ref = sacrebleu.sentence_bleu(h, r, smooth_method=smooth)
            _assert_bleu(sentence_bleu(h, r, smooth=smooth), ref, counts=smooth != "add-k")


def test_13a_tokens_equal_sacrebleu():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    ref = Tokenizer13a()
    lines = [line for hyps, refs in CORPORA.values() for line in hyps]
    lines += ["a&quot;b&amp;quot;c &lt;x&gt; <skipped>d", "3.14. x,y 1,000, 2-3 a-b -1 ~`{|}",
              "end-\nof-line\n\nnext", "tabs\tand  spaces ", "¿Qué? «quote» – 1990–2000"]
    for line in lines:
        assert _tokenize_13a(line.rstrip()) == ref(line.rstrip()).split(), line


def test_bleu_values_a_user_would_check():
    same = corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert same["bleu"] == pytest.approx(100.0) and same["bp"] == 1.0
    assert corpus_bleu(["x y z w"], ["a b c d"])["bleu"] == 0.0
    # a short sentence with no 4-gram can still score at sentence level (effective order)
    assert sentence_bleu("a b", "a b")["bleu"] == pytest.approx(100.0)
    # sentence_bleu takes a single reference string or a list of them
    assert sentence_bleu("a b c", "a b d") == sentence_bleu("a b c", ["a b d"])


def test_bleu_empty_inputs_score_zero():
    empty = corpus_bleu([], [])
    assert empty["bleu"] == 0.0 and empty["sys_len"] == empty["ref_len"] == 0
    assert corpus_bleu([""], ["a reference"])["bleu"] == 0.0
    assert corpus_bleu([""], ["a reference"])["bp"] == 0.0
    assert sentence_bleu("", "")["bleu"] == 0.0


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="3 hypotheses but 2 references"):
        corpus_bleu(["a", "b", "c"], ["a", "b"])
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        rouge(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="hypothesis 1 has an empty list"):
        corpus_bleu(["a", "b"], [["a"], []])
    with pytest.raises(TypeError, match="not one string"):
        corpus_bleu("the cat", ["the cat"])
    with pytest.raises(ValueError, match="tokenize='intl'"):
        corpus_bleu(["a"], ["a"], tokenize="intl")
    with pytest.raises(ValueError, match="smooth='add-one'"):
        corpus_bleu(["a"], ["a"], smooth="add-one")


def _rouge_ref(hyps, refs, use_stemmer=False) -> dict:
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    sums = dict.fromkeys(ROUGE_TYPES, 0.0)
    for h, r in zip(hyps, refs):
        scores = scorer.score(r, h) if isinstance(r, str) else scorer.score_multi(r, h)
        for k in ROUGE_TYPES:
            sums[k] += scores[k].fmeasure
    return {k: 100 * v / len(hyps) for k, v in sums.items()}


SUMMARIES = (["The cats were running quickly.\nThey stopped near the houses.",
              "police killed the gunman\nthe gunman was killed",
              "Stocks rallied on Monday.\n\nInvestors cheered the news.\nMarkets rose.",
              "It was his bus; the gas has gone."],
             ["Cats ran quickly and then stopped.\nThe houses were near.",
              "the gunman was killed by police\npolice killed him",
              "Investors cheered.\nStocks rallied strongly on Monday, markets rose.",
              # words of three letters are not stemmed: "was" must not become "wa"
              "it wa hi bu the ga ha gone"])


@pytest.mark.parametrize("use_stemmer", [False, True])
@pytest.mark.parametrize("name", [*CORPORA, "summaries"])
def test_rouge_equals_rouge_score(name, use_stemmer):
    if use_stemmer:
        pytest.importorskip("nltk")
    hyps, refs = SUMMARIES if name == "summaries" else CORPORA[name]
    ours = rouge(hyps, refs, use_stemmer=use_stemmer)
    assert ours == pytest.approx(_rouge_ref(hyps, refs, use_stemmer), abs=1e-6)


def test_rouge_values_a_user_would_check():
    assert rouge(["The Cat sat."], ["the cat sat"]) == pytest.approx(dict.fromkeys(ROUGE_TYPES,
                                                                                    100.0))
    assert rouge([], []) == dict.fromkeys(ROUGE_TYPES, 0.0)
    assert rouge([""], ["something"]) == dict.fromkeys(ROUGE_TYPES, 0.0)
    # stemming is what makes "running" match "runs"
    assert rouge(["runs"], ["running"])["rouge1"] == 0.0
    pytest.importorskip("nltk")
    assert rouge(["runs"], ["running"], use_stemmer=True)["rouge1"] == pytest.approx(100.0)


# a small vocabulary so that random sentences share n-grams; punctuation and digits
# exercise the tokenizers, and "\n" creates rougeLsum sentences
VOCAB = ("the a cat dog sat ran on over mat house 3 1990 2,000 3.5 , . ! ? - ( ) \" ' "
         "über Straße running runs ran quickly \n").split(" ")


def _random_text(rng: random.Random) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(rng.randint(0, 14)))


def test_random_text_parity():
    rng = random.Random(1234)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES))
    for _ in range(50):
        n = rng.randint(1, 4)
        hyps = [_random_text(rng) for _ in range(n)]
        refs = [[_random_text(rng) for _ in range(rng.randint(1, 3))] for _ in range(n)]
        ref = sacrebleu.corpus_bleu(hyps, _ref_streams(refs))
        _assert_bleu(corpus_bleu(hyps, refs), ref)
        _assert_bleu(sentence_bleu(hyps[0], refs[0]), sacrebleu.sentence_bleu(hyps[0], refs[0]))
        singles = [r[0] for r in refs]
        want = {k: 100 * sum(scorer.score(r, h)[k].fmeasure for h, r in zip(hyps, singles)) / n
                for k in ROUGE_TYPES}
        assert rouge(hyps, singles) == pytest.approx(want, abs=1e-6)
