"""BLEU and ROUGE: n-gram overlap between generated and reference text, computed locally.

Both numbers are only comparable with published ones when every detail of the recipe
matches, so each function here reproduces one reference implementation exactly rather
than the paper's formula:

- `corpus_bleu` / `sentence_bleu` are sacrebleu 2.x's (Post, 2018, "A Call for Clarity in
  Reporting BLEU Scores") with its defaults: the mteval-v13a tokenizer, "exp" smoothing,
  n-grams up to 4, reference n-gram counts clipped at their maximum over the references,
  and the brevity penalty against the reference length closest to each hypothesis.
- `rouge` is Google's rouge-score package (`RougeScorer(..., use_stemmer=...)`), which
  itself replicates ROUGE-1.5.5 (Lin, 2004): lower-cased [a-z0-9] tokens, F-measure per
  pair, averaged over pairs.

Neither package is a dependency; tests/eval/test_overlap.py checks the equality on fixed
and random text. Scores are on a 0-100 scale, as papers report them.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

MAX_ORDER = 4  # BLEU-4: every published BLEU uses n-grams up to 4

# sacrebleu's defaults for the smoothing methods that take a value (Chen & Cherry, 2014)
_SMOOTH_VALUES = {"none": 0.0, "floor": 0.1, "add-k": 1.0, "exp": 0.0}

# mteval-v13a.pl's language-dependent rules, in the order and form sacrebleu applies them
_13A_RULES = [
    # ASCII symbols and punctuation except . , - and the apostrophe become their own token
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    # a period or comma is split off unless it sits between digits (3.14, 1,000)
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    # a dash after a digit is split off (1990-2000), a dash inside a word is not
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
]


def _tokenize_13a(line: str) -> list[str]:
    """The tokens mteval-v13a.pl (WMT's official scorer) makes of one detokenized line."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:  # undo the XML escapes of SGML test sets; &quot; first, as mteval does
        line = line.replace("&quot;", '"').replace("&amp;", "&")
        line = line.replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for pattern, repl in _13A_RULES:
        line = pattern.sub(repl, line)
    return line.split()


_BLEU_TOKENIZERS: dict[str, Callable[[str], list[str]]] = {
    "13a": _tokenize_13a,
    "none": str.split,  # text that is already tokenized: split on whitespace only
}


def _bleu_tokens(text: str, lowercase: bool, tokenize: str) -> list[str]:
    # sacrebleu lower-cases, then strips only trailing whitespace: a line that ends in
    # "-\n" keeps its dash instead of being joined to nothing by the "-\n" rule
    if lowercase:
        text = text.lower()
    return _BLEU_TOKENIZERS[tokenize](text.rstrip())


def _ngrams(tokens: Sequence[str], orders: Iterable[int]) -> Counter[tuple[str, ...]]:
    """Counts of every n-gram whose order n is in `orders`."""
    return Counter(tuple(tokens[i:i + n]) for n in orders for i in range(len(tokens) - n + 1))


def _closest_ref_len(hyp_len: int, ref_lens: Sequence[int]) -> int:
    """The reference length nearest to the hypothesis length; ties go to the shorter one."""
    return min(ref_lens, key=lambda r: (abs(hyp_len - r), r))


def _segment_stats(hyp: list[str], refs: list[list[str]]) -> list[int]:
    """[hyp_len, ref_len, matches per order..., hypothesis n-grams per order...]."""
    orders = range(1, MAX_ORDER + 1)
    ref_counts: Counter[tuple[str, ...]] = Counter()
    for ref in refs:
        ref_counts |= _ngrams(ref, orders)  # |: a match is clipped at the most any ref has
    correct, total = [0] * MAX_ORDER, [0] * MAX_ORDER
    for ngram, count in _ngrams(hyp, orders).items():
        total[len(ngram) - 1] += count
        correct[len(ngram) - 1] += min(count, ref_counts[ngram])
    return [len(hyp), _closest_ref_len(len(hyp), [len(r) for r in refs]), *correct, *total]


def _bleu_from_stats(stats: Sequence[int], smooth: str, effective_order: bool) -> dict:
    """BLEU from summed segment statistics, step for step as sacrebleu's `compute_bleu`."""
    sys_len, ref_len = int(stats[0]), int(stats[1])
    correct = [float(c) for c in stats[2:2 + MAX_ORDER]]
    total = [float(t) for t in stats[2 + MAX_ORDER:]]
    counts, totals = [int(c) for c in correct], [int(t) for t in total]
    bp = 1.0
    if sys_len < ref_len:
        bp = math.exp(1 - ref_len / sys_len) if sys_len > 0 else 0.0
    precisions = [0.0] * MAX_ORDER
    out = {"bleu": 0.0, "precisions": precisions, "bp": bp, "sys_len": sys_len,
           "ref_len": ref_len, "counts": counts, "totals": totals}
    if not any(correct):  # no unigram matches: 0, whatever the smoothing would make of it
        return out
    value = _SMOOTH_VALUES[smooth]
    exp_factor, order = 1.0, MAX_ORDER
    for n in range(MAX_ORDER):
        if smooth == "add-k" and n > 0:
            correct[n] += value
            total[n] += value
        if total[n] == 0:  # the hypotheses are too short for this order (and higher ones)
            break
        if effective_order:  # sentence BLEU averages only over orders the text has
            order = n + 1
        if correct[n] == 0:
            if smooth == "exp":  # NIST / mteval: 1/2, 1/4, ... of a match per empty order
                exp_factor *= 2
                precisions[n] = 100.0 / (exp_factor * total[n])
            elif smooth == "floor":
                precisions[n] = 100.0 * value / total[n]
        else:
            precisions[n] = 100.0 * correct[n] / total[n]
    # log(0) is floored at -9999999999 as in sacrebleu, so an empty order gives BLEU 0.0
    logs = [math.log(p) if p > 0 else -9999999999 for p in precisions[:order]]
    out["bleu"] = bp * math.exp(sum(logs) / order)
    return out


def _check_bleu_options(tokenize: str, smooth: str) -> None:
    if tokenize not in _BLEU_TOKENIZERS:
        raise ValueError(f"unknown BLEU tokenize={tokenize!r}; use one of "
                         f"{sorted(_BLEU_TOKENIZERS)} ('13a' is what WMT and sacrebleu report)")
    if smooth not in _SMOOTH_VALUES:
        raise ValueError(f"unknown BLEU smooth={smooth!r}; use one of {sorted(_SMOOTH_VALUES)}")


def _reference_lists(n_hyps: int, references: Sequence[str] | Sequence[Sequence[str]],
                     caller: str) -> list[list[str]]:
    """One list of reference strings per hypothesis, with the user's mistakes named."""
    if isinstance(references, str):
        raise TypeError(f"{caller}: references must be a list with one entry per hypothesis, "
                        "not a single string")
    if n_hyps != len(references):
        raise ValueError(f"{caller}: {n_hyps} hypotheses but {len(references)} references; "
                         "pass one reference (or one list of references) per hypothesis")
    out = []
    for i, refs in enumerate(references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs:
            raise ValueError(f"{caller}: hypothesis {i} has an empty list of references")
        out.append(refs)
    return out


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]],
                *, lowercase: bool = False, tokenize: str = "13a", smooth: str = "exp") -> dict:
    """Corpus BLEU of detokenized hypotheses, equal to sacrebleu's `corpus_bleu`.

    `references[i]` is the reference of `hypotheses[i]`, or a list of its references (the
    number may vary per hypothesis). Note that sacrebleu takes the transpose, reference
    *streams*: its `[refs]` is our `refs`, and its `[refs_a, refs_b]` is our
    `list(zip(refs_a, refs_b))`.

    BLEU is a corpus statistic: n-gram matches and lengths are summed over all segments
    before the precisions and the brevity penalty are taken, so it is not the mean of
    sentence BLEUs. `tokenize="13a"` is the mteval-v13a tokenizer every WMT paper uses;
    `"none"` splits on whitespace, for text that is already tokenized. `smooth` is one of
    sacrebleu's "exp" (default), "floor" (0.1), "add-k" (k=1) or "none".

    Returns {"bleu", "precisions" (n = 1..4), "bp", "sys_len", "ref_len", "counts",
    "totals"}, BLEU and precisions on a 0-100 scale. An empty corpus, or one with no
    matching word, scores 0.0.
    """
    if isinstance(hypotheses, str):
        raise TypeError("corpus_bleu: hypotheses must be a list of strings, not one string "
                        "(use sentence_bleu for a single sentence)")
    _check_bleu_options(tokenize, smooth)
    ref_lists = _reference_lists(len(hypotheses), references, "corpus_bleu")
    stats = [0] * (2 + 2 * MAX_ORDER)
    for hyp, refs in zip(hypotheses, ref_lists):
        seg = _segment_stats(_bleu_tokens(hyp, lowercase, tokenize),
                             [_bleu_tokens(r, lowercase, tokenize) for r in refs])
        stats = [a + b for a, b in zip(stats, seg)]
    return _bleu_from_stats(stats, smooth, effective_order=False)


def sentence_bleu(hypothesis: str, references: str | Sequence[str], *, lowercase: bool = False,
                  tokenize: str = "13a", smooth: str = "exp") -> dict:
    """BLEU of one sentence, equal to sacrebleu's `sentence_bleu`.

    As sacrebleu does here, the geometric mean runs only over the n-gram orders the
    hypothesis has ("effective order"): without it a three-word sentence, which has no
    4-gram, could never score above 0. Same result dict as `corpus_bleu`.
    """
    _check_bleu_options(tokenize, smooth)
    refs = _reference_lists(1, [references], "sentence_bleu")[0]
    stats = _segment_stats(_bleu_tokens(hypothesis, lowercase, tokenize),
                           [_bleu_tokens(r, lowercase, tokenize) for r in refs])
    return _bleu_from_stats(stats, smooth, effective_order=True)


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_SPACES = re.compile(r"\s+")
_VALID_TOKEN = re.compile(r"^[a-z0-9]+$")


@functools.lru_cache(maxsize=1)
def _porter_stem() -> Callable[[str], str]:
    """nltk's Porter stemmer in its default mode, the very one rouge-score uses."""
    try:
        from nltk.stem.porter import PorterStemmer
    except ImportError as e:
        raise ValueError("rouge(use_stemmer=True) needs nltk for the Porter stemmer that "
                         "rouge-score uses: pip install nltk, or pass use_stemmer=False") from e
    # cached: summaries repeat words, and stemming is most of the tokenizer's time
    return functools.lru_cache(maxsize=2**16)(PorterStemmer().stem)


def _rouge_tokens(text: str, stem: Callable[[str], str] | None) -> list[str]:
    """rouge-score's default tokenizer: lower-case, anything but [a-z0-9] separates words.

    Letters outside ASCII (umlauts, accents) are separators too, so "Müller" is the two
    tokens "m" and "ller"; that is what ROUGE-1.5.5 and rouge-score do, and matching them
    matters more here than being right about German.
    """
    tokens = _SPACES.split(_NON_ALNUM.sub(" ", text.lower()))
    if stem is not None:
        tokens = [stem(t) if len(t) > 3 else t for t in tokens]  # short words stay as they are
    return [t for t in tokens if _VALID_TOKEN.match(t)]


def _f1(matches: int, n_hyp: int, n_ref: int) -> float:
    p, r = matches / max(n_hyp, 1), matches / max(n_ref, 1)
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _rouge_n(hyp: list[str], ref: list[str], n: int) -> float:
    h, r = _ngrams(hyp, (n,)), _ngrams(ref, (n,))
    return _f1(sum((h & r).values()), sum(h.values()), sum(r.values()))


def _lcs_table(ref: Sequence[str], hyp: Sequence[str]) -> list[list[int]]:
    """table[i][j]: length of the longest common subsequence of ref[:i] and hyp[:j]."""
    table = [[0] * (len(hyp) + 1) for _ in range(len(ref) + 1)]
    for i in range(1, len(ref) + 1):
        row, prev = table[i], table[i - 1]
        for j in range(1, len(hyp) + 1):
            row[j] = prev[j - 1] + 1 if ref[i - 1] == hyp[j - 1] else max(prev[j], row[j - 1])
    return table


def _rouge_l(hyp: list[str], ref: list[str]) -> float:
    if not hyp or not ref:
        return 0.0
    return _f1(_lcs_table(ref, hyp)[-1][-1], len(hyp), len(ref))


def _lcs_positions(ref: Sequence[str], hyp: Sequence[str]) -> list[int]:
    """Positions in ref of one longest common subsequence.

    Which one matters for ROUGE-Lsum (the union over hypothesis sentences depends on it),
    so the backtrack breaks ties as rouge-score's `_backtrack_norec` does.
    """
    table = _lcs_table(ref, hyp)
    i, j, out = len(ref), len(hyp), []
    while i > 0 and j > 0:
        if ref[i - 1] == hyp[j - 1]:
            out.append(i - 1)
            i, j = i - 1, j - 1
        elif table[i][j - 1] > table[i - 1][j]:
            j -= 1
        else:
            i -= 1
    return out[::-1]


def _rouge_lsum(hyp_sents: list[list[str]], ref_sents: list[list[str]]) -> float:
    """Summary-level LCS (Lin 2004, section 3.2) with ROUGE-1.5.5's guard on double counts.

    Each reference sentence is matched against the union of its LCS with every hypothesis
    sentence; a token is credited only while both texts still have an unused copy of it.
    """
    n_ref, n_hyp = sum(map(len, ref_sents)), sum(map(len, hyp_sents))
    if not n_ref or not n_hyp:
        return 0.0
    left_ref = Counter(t for s in ref_sents for t in s)
    left_hyp = Counter(t for s in hyp_sents for t in s)
    hits = 0
    for ref in ref_sents:
        union = sorted(set().union(*(_lcs_positions(ref, h) for h in hyp_sents)))
        for token in (ref[i] for i in union):
            if left_hyp[token] > 0 and left_ref[token] > 0:
                hits += 1
                left_hyp[token] -= 1
                left_ref[token] -= 1
    return _f1(hits, n_hyp, n_ref)


def _rouge_pair(hyp: str, ref: str, stem: Callable[[str], str] | None) -> dict[str, float]:
    """F-measures (0-1) of one hypothesis against one reference."""
    h, r = _rouge_tokens(hyp, stem), _rouge_tokens(ref, stem)

    # rougeLsum reads one sentence per line, as rouge-score does without split_summaries
    def sents(text: str) -> list[list[str]]:
        return [_rouge_tokens(s, stem) for s in text.split("\n") if s]

    return {"rouge1": _rouge_n(h, r, 1), "rouge2": _rouge_n(h, r, 2), "rougeL": _rouge_l(h, r),
            "rougeLsum": _rouge_lsum(sents(hyp), sents(ref))}


def rouge(hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]], *,
          use_stemmer: bool = False) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum F-measures (0-100) over the pairs.

    Equals averaging `rouge_score.rouge_scorer.RougeScorer(ROUGE_TYPES, use_stemmer=...)`
    `.score(reference, hypothesis)[type].fmeasure` over the pairs, times 100. With several
    references for a hypothesis, each type takes the best F-measure among them, as
    rouge-score's `score_multi` does. ROUGE-Lsum treats each line as a sentence, so put
    summaries one sentence per line to get the number summarization papers report.

    `use_stemmer=True` applies the Porter stemmer to words longer than three letters (the
    `-m` option of ROUGE-1.5.5) and needs nltk installed. An empty corpus scores 0.0.
    """
    if isinstance(hypotheses, str):
        raise TypeError("rouge: hypotheses must be a list of strings, not one string")
    ref_lists = _reference_lists(len(hypotheses), references, "rouge")
    stem = _porter_stem() if use_stemmer else None
    sums = dict.fromkeys(ROUGE_TYPES, 0.0)
    for hyp, refs in zip(hypotheses, ref_lists):
        pairs = [_rouge_pair(hyp, ref, stem) for ref in refs]
        for k in ROUGE_TYPES:
            sums[k] += max(p[k] for p in pairs)
    n = len(hypotheses)
    return {k: 100.0 * v / n if n else 0.0 for k, v in sums.items()}
