"""Tokenizers: train WordPiece, byte-level BPE, SentencePiece-style unigram or character
vocabularies, load existing ones (zerolm or Hugging Face files), encode with truncation and
dynamic padding, decode.

A thin layer over Hugging Face `tokenizers` (Rust, fast), called the *backend* here.
zerolm adds the special-token bookkeeping, padding into tensors, and files on disk that
Hugging Face `transformers` can load too.

The four kinds zerolm trains:

- ``wordpiece``: BERT (lower-cased by default, accents stripped with lower-casing,
  ``[PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4``, ``[CLS] A [SEP] B [SEP]`` on encode).
- ``bpe``: GPT-2 byte-level BPE (any text round-trips, ``<|endoftext|>`` is bos, eos
  and pad; nothing is added on encode).
- ``char``: one token per character, ids in sorted character order as in nanoGPT, then
  ``<unk>`` and ``<|endoftext|>``; decoding reproduces the text exactly.
- ``unigram``: T5's SentencePiece unigram model (NFKC as a SentencePiece character map;
  leading, trailing and repeated whitespace and line ends dropped, as SentencePiece does;
  ``▁`` marks a word start; ``<pad>=0 </s>=1 <unk>=2``; ``A </s>`` and ``A </s> B </s>``
  on encode; a character never seen in training is ``<unk>``); the files load as Hugging
  Face's T5TokenizerFast.

Sentinels: ``unigram`` and ``bpe`` take ``sentinels=N``, the tokens ``<extra_id_0>`` ..
``<extra_id_{N-1}>`` of T5's span corruption, appended to the vocabulary in descending
order as in T5 (``<extra_id_0>`` is the last id). `Tokenizer.sentinel_ids` finds them in
any tokenizer, Hugging Face T5 files included.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as Backend

from zerolm.atomic import atomic_write_text
from zerolm.data.text import is_table, iter_records
from zerolm.errors import ConfigError, DataError
from zerolm.tokenizers.charsmap import precompiled_charsmap

log = logging.getLogger(__name__)

KINDS = ("wordpiece", "bpe", "char", "unigram")
SENTINEL_KINDS = ("unigram", "bpe")  # kinds that `train(..., sentinels=N)` accepts
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4, as in BERT
EOT = "<|endoftext|>"
CHAR_SPECIALS = ["<unk>", EOT]  # appended after the characters
T5_SPECIALS = ["<pad>", "</s>", "<unk>"]  # ids 0..2, as in T5 (pad is also the decoder's start)
META = "\u2581"  # "▁": SentencePiece's word-start marker, standing for a space
_SENTINEL = re.compile(r"<extra_id_(\d+)>")

ROLES = ("pad", "unk", "cls", "sep", "mask", "bos", "eos")
# token names tried, in order, for each role when the files do not name one
_FALLBACKS: dict[str, list[str]] = {
    "pad": ["[PAD]", "<pad>"],
    "unk": ["[UNK]", "<unk>"],
    "cls": ["[CLS]", "<s>"],
    "sep": ["[SEP]", "</s>"],
    "mask": ["[MASK]", "<mask>"],
    "bos": [EOT, "<s>"],
    "eos": [EOT, "</s>"],
}
_TOKENIZER_CLASS = {"wordpiece": "BertTokenizerFast", "bpe": "GPT2TokenizerFast",
                    "unigram": "T5TokenizerFast"}
# what transformers writes for "no limit" (int(1e30)); read back as None
_NO_MAX_LENGTH = 1_000_000_000_000_000_019_884_624_838_656


class Tokenizer:
    """Text <-> token ids. Build with `Tokenizer.train(...)` or `Tokenizer.load(path)`.

    Attributes:
        backend: the wrapped `tokenizers.Tokenizer`; padding and truncation are always
            off on it (zerolm pads into tensors itself and truncates per call).
        kind: "wordpiece", "bpe" (byte-level), "char", "unigram" (T5's layout), or
            "other" for a loaded tokenizer of another type.
        lowercase: whether text is lower-cased before tokenization.
        model_max_length: the longest input the matching model accepts, when known.
    """

    def __init__(self, backend: Backend, kind: str, *, lowercase: bool = False,
                 model_max_length: int | None = None,
                 special_tokens: dict[str, str] | None = None) -> None:
        """Wrap `backend`. `special_tokens` maps roles ("pad", "eos", ...) to token
        names; roles it leaves out are found by the usual names ("[PAD]", "<pad>", ...)."""
        backend.no_padding()
        backend.no_truncation()
        self.backend = backend
        self.kind = kind
        self.lowercase = lowercase
        self.model_max_length = model_max_length
        # the backend's truncation is switched on only for the duration of one call
        self._lock = threading.Lock()
        vocab = backend.get_vocab(with_added_tokens=True)
        names = special_tokens or {}
        self._special_names: dict[str, str] = {}
        for role in ROLES:
            wanted = [names[role]] if names.get(role) else []
            # T5's </s> ends every text (and so also separates a pair), but it is eos, not a
            # separator: Hugging Face's T5 tokenizer has no sep token, nor does zerolm's
            fallback = [] if kind == "unigram" and role == "sep" else _FALLBACKS[role]
            for tok in wanted + fallback:
                if tok in vocab:
                    self._special_names[role] = tok
                    break
        if "pad" not in self._special_names and "eos" in self._special_names:
            self._special_names["pad"] = self._special_names["eos"]  # GPT-2 style: pad with eos
        self._ids = {role: vocab[tok] for role, tok in self._special_names.items()}
        added = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
        self.special_ids: frozenset[int] = frozenset(
            vocab[t] for t in added | set(self._special_names.values()) if t in vocab)
        self._sentinel_ids = _find_sentinels(vocab)

    # ---------------------------------------------------------------- training
    @classmethod
    def train(cls, kind: str, files: Iterable[str | os.PathLike], vocab_size: int, *,
              min_frequency: int = 2, lowercase: bool | None = None, sentinels: int = 0,
              columns: Sequence[str] = ("text",), show_progress: bool = False) -> Tokenizer:
        """Train a tokenizer of `kind` ("wordpiece", "bpe", "char" or "unigram") on text files.

        Args:
            kind: which tokenizer (see the module docstring).
            files: UTF-8 text files, plain or `.gz`; of a table (.tsv, .csv, .jsonl) the
                `columns` are read. An empty or non-UTF-8 file, or a table without one
                of the columns, raises DataError naming it.
            vocab_size: target vocabulary size, special tokens and sentinels included
                (ignored by "char", whose vocabulary is every character seen). Unigram
                training may stop short of it on a small corpus.
            min_frequency: a word piece or merge must occur this often to be learnt
                (wordpiece and bpe; the unigram trainer has no such threshold).
            lowercase: lower-case text first; None means True for wordpiece (as in
                uncased BERT) and False for the others.
            sentinels: unigram and bpe: add `<extra_id_0>` .. `<extra_id_{sentinels-1}>`
                after the learnt vocabulary, in descending order as T5 (`<extra_id_0>`
                gets the last id), for span corruption. T5 uses 100.
            columns: the text columns of tables: "text" by default; both sides of a
                translation table (Multi30k's "en" and "de") for a shared vocabulary.
            show_progress: show the backend's progress bar.

        BPE and char training are deterministic. WordPiece and unigram training in
        `tokenizers` are not (WordPiece breaks ties between equally frequent pieces in
        hash-map order, huggingface/tokenizers#1794; unigram sums its piece scores in
        hash-map order, so they differ in the last digits and a near tie can go either
        way): train once and keep the saved files.
        """
        paths = [Path(f) for f in files]
        columns = (columns,) if isinstance(columns, str) else tuple(columns)
        if not columns:
            raise ValueError("columns: name at least one text column of the tables")
        read = functools.partial(_texts, paths, columns=columns)
        if not paths:
            raise DataError(f"no training files given for the {kind} tokenizer")
        if kind not in KINDS:
            raise ValueError(f"unknown tokenizer kind {kind!r}: use one of {', '.join(KINDS)}")
        if kind != "char" and vocab_size < 1:
            raise ValueError(f"vocab_size must be positive for a {kind} tokenizer, got {vocab_size}")
        if sentinels < 0 or (sentinels and kind not in SENTINEL_KINDS):
            raise ConfigError(f"sentinels={sentinels}: sentinel tokens (span corruption) are added to "
                              f"{' and '.join(SENTINEL_KINDS)} tokenizers only, and their number must be "
                              f">= 0; got kind {kind!r}")
        learnt = vocab_size - sentinels  # the trainer's share; the sentinels come after
        if sentinels and learnt <= len(T5_SPECIALS):
            raise ConfigError(f"vocab_size={vocab_size} leaves no room for learnt tokens beside "
                              f"{sentinels} sentinels; raise vocab_size (T5: 32100 with 100 sentinels)")
        if kind == "wordpiece":
            lower = True if lowercase is None else lowercase
            backend = _bert_backend(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##",
                                                     max_input_chars_per_word=100), lower)
            trainer = trainers.WordPieceTrainer(
                vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=BERT_SPECIALS,
                continuing_subword_prefix="##", show_progress=show_progress)
            backend.train_from_iterator(read(keep_ends=False), trainer=trainer)
            _add_bert_template(backend)
        elif kind == "bpe":
            lower = bool(lowercase)
            backend = Backend(models.BPE())
            if lower:
                backend.normalizer = normalizers.Lowercase()
            backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            backend.decoder = decoders.ByteLevel()
            backend.post_processor = processors.ByteLevel(trim_offsets=False)  # as GPT-2's file
            trainer = trainers.BpeTrainer(
                vocab_size=learnt, min_frequency=min_frequency, special_tokens=[EOT],
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress)
            # A causal LM reads line ends (its corpus keeps "\n"), so BPE learns from
            # lines with their ends: merges such as ".\n" then exist.
            backend.train_from_iterator(read(keep_ends=True), trainer=trainer)
        elif kind == "unigram":
            lower = bool(lowercase)
            backend = _unigram_backend(models.Unigram(), lower)
            trainer = trainers.UnigramTrainer(
                vocab_size=learnt, special_tokens=T5_SPECIALS, unk_token="<unk>",
                show_progress=show_progress)
            # whitespace, line ends included, only separates words here (as in SentencePiece)
            backend.train_from_iterator(read(keep_ends=False), trainer=trainer)
            _add_t5_template(backend)
        else:
            lower = bool(lowercase)
            backend = _char_backend(read(keep_ends=True, skip_blank=False), lower)
        if sentinels:
            # added after training, so they take the last ids; descending as in T5
            backend.add_special_tokens([sentinel_token(i) for i in reversed(range(sentinels))])
        tok = cls(backend, kind, lowercase=lower)
        log.info("trained a %s tokenizer: %d tokens from %s", kind, tok.vocab_size,
                 ", ".join(map(str, paths)))
        return tok

    # ------------------------------------------------------------ load / save
    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a tokenizer written by zerolm or Hugging Face.

        `path` is a directory holding `tokenizer.json` (or, for BERT checkpoints, only a
        `vocab.txt`), or a `tokenizer.json` or `vocab.txt` file. `tokenizer_config.json` and
        `special_tokens_map.json` beside it, when present, name the special tokens and
        give `do_lower_case` and `model_max_length`. Padding and truncation baked into a
        tokenizer.json are switched off; the truncation length becomes
        `model_max_length` when the config gives none.
        """
        p = Path(path)
        if not p.exists():
            raise DataError(f"{p}: no such tokenizer file or directory")
        directory = p if p.is_dir() else p.parent
        given_vocab = p.is_file() and p.suffix == ".txt"  # a vocab.txt named directly
        tj = p / "tokenizer.json" if p.is_dir() else (None if given_vocab else p)
        conf = _read_configs(directory)
        specials = {role: name for role in ROLES if (name := _token_name(conf.get(f"{role}_token")))}
        max_len = conf.get("model_max_length")
        max_len = int(max_len) if isinstance(max_len, (int, float)) and 0 < max_len < 1e9 else None
        if tj is not None and tj.is_file():
            try:
                raw = json.loads(tj.read_text(encoding="utf-8-sig"))
                if not isinstance(raw, dict):
                    raise DataError(f"{tj}: expected a JSON object, found {type(raw).__name__}")
                backend = Backend.from_str(json.dumps(raw))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DataError(f"{tj}: not a JSON file ({e})") from None
            except DataError:
                raise
            except Exception as e:  # the Rust library raises a plain Exception
                raise DataError(f"{tj}: not a tokenizer.json this version of `tokenizers` "
                                f"can read ({e})") from None
            trunc = raw.get("truncation") or {}
            if max_len is None and trunc.get("max_length"):
                max_len = int(trunc["max_length"])
            if raw.get("padding") or trunc:
                log.debug("%s: switched off the padding / truncation stored in the file", tj)
            kind = conf.get("zerolm_kind") or _guess_kind(raw)
            # the normalizer is what happens to text; the config's flag only describes it
            lower = _lowercases(raw.get("normalizer"))
            if conf.get("do_lower_case") is not None and bool(conf["do_lower_case"]) != lower:
                log.warning("%s: do_lower_case=%s in tokenizer_config.json, but the normalizer in "
                            "tokenizer.json %s; following tokenizer.json", directory,
                            conf["do_lower_case"], "lower-cases" if lower else "keeps case")
            return cls(backend, kind, lowercase=lower, model_max_length=max_len,
                       special_tokens=specials)
        vocab = p if given_vocab else directory / "vocab.txt"
        if vocab.is_file() and (given_vocab or p.is_dir()):
            lower = bool(conf.get("do_lower_case", True))
            try:
                wp = models.WordPiece.from_file(str(vocab), unk_token=specials.get("unk", "[UNK]"))
            except Exception as e:
                raise DataError(f"{vocab}: not a WordPiece vocabulary (one token a line): {e}") from None
            backend = _bert_backend(wp, lower)
            # as BertTokenizerFast does: specials are never split or lower-cased
            backend.add_special_tokens([t for t in BERT_SPECIALS if backend.token_to_id(t) is not None])
            if backend.token_to_id("[CLS]") is not None and backend.token_to_id("[SEP]") is not None:
                _add_bert_template(backend)
            return cls(backend, "wordpiece", lowercase=lower, model_max_length=max_len,
                       special_tokens=specials)
        raise DataError(f"{p}: no tokenizer here (expected a tokenizer.json, or a directory with "
                        f"tokenizer.json or a BERT vocab.txt); train one with `zerolm tokenizer train`")

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json` and,
        for wordpiece, `vocab.txt` into `directory` (each file atomically). Hugging Face
        `AutoTokenizer.from_pretrained(directory)` loads the result."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(d / "tokenizer.json", self.backend.to_str(pretty=True))
        specials: dict[str, Any] = {f"{role}_token": tok for role, tok in self._special_names.items()}
        conf: dict[str, Any] = {
            "tokenizer_class": _TOKENIZER_CLASS.get(self.kind, "PreTrainedTokenizerFast"),
            "do_lower_case": self.lowercase,
            "model_max_length": self.model_max_length or _NO_MAX_LENGTH,
            "clean_up_tokenization_spaces": False,
            **specials,
            "zerolm_kind": self.kind,
        }
        if self.kind == "bpe":
            conf["add_prefix_space"] = False
        sentinels = [sentinel_token(i) for i in range(len(self._sentinel_ids))]
        if self.kind == "unigram":
            conf["extra_ids"] = len(sentinels)  # T5TokenizerFast checks it against the list below
        if sentinels:
            conf["additional_special_tokens"] = specials["additional_special_tokens"] = sentinels
        atomic_write_text(d / "tokenizer_config.json", json.dumps(conf, indent=2, ensure_ascii=False) + "\n")
        atomic_write_text(d / "special_tokens_map.json",
                      json.dumps(specials, indent=2, ensure_ascii=False) + "\n")
        if self.kind == "wordpiece":
            ordered = sorted(self.backend.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
            if [i for _, i in ordered] != list(range(len(ordered))):
                log.warning("%s: the vocabulary ids have gaps; vocab.txt renumbers them", d)
            atomic_write_text(d / "vocab.txt", "".join(t + "\n" for t, _ in ordered))
        return d

    # ------------------------------------------------------------- subsetting
    def check_subset(self) -> None:
        """Raise ConfigError unless `subset` keeps this tokenizer's splits: WordPiece and
        WordLevel (char) vocabularies only."""
        model = type(self.backend.model).__name__
        if model in _SUBSETTABLE:
            return
        if model == "BPE":
            raise ConfigError(
                "vocabulary pruning keeps a subset of the tokens, and a BPE tokenizer builds its tokens by "
                "merges: dropping a token drops the merges that make or use it, which changes how kept words "
                "are split too (and byte-level BPE needs every byte token for unseen text). Prune the "
                "vocabulary of a WordPiece model (BERT family) only")
        raise ConfigError(f"vocabulary pruning supports WordPiece and WordLevel (char) tokenizers; this one is "
                          f"{model}, whose split of a word may depend on tokens that would be dropped")

    def subset(self, keep_ids: Iterable[int]) -> tuple[Tokenizer, list[int]]:
        """(a tokenizer of the tokens `keep_ids` only, `old_ids`): the kept tokens in their old
        order, renumbered 0..n-1, so new id i was old id `old_ids[i]` (index an embedding's
        rows with it). Every special and added token, the unknown token and the tokens the
        post-processor inserts are kept whether asked for or not, and every id the backend
        holds (vocabulary, added tokens, template, padding) is renumbered.

        Text whose pieces were all kept tokenizes exactly as before. WordPiece splits a word
        by greedy longest match: at each position the full vocabulary's longest match was
        kept, and a subset holds no longer one, so each step takes the same piece. WordLevel
        looks each word up alone. Other models are refused (`check_subset`).
        """
        self.check_subset()
        raw = json.loads(self.backend.to_str())
        model = raw["model"]
        vocab: dict[str, int] = model["vocab"]
        full = self.backend.get_vocab(with_added_tokens=True)  # token -> id, added tokens included
        keep: set[int] = set()
        for i in keep_ids:
            if not 0 <= int(i) < self.vocab_size:
                raise ValueError(f"subset: id {i} is not in this vocabulary of {self.vocab_size} tokens")
            keep.add(int(i))
        # what the backend itself refers to: dropping it would break encoding (or unseen text)
        required = set(self.special_ids) | set(self._ids.values())
        required |= {int(t["id"]) for t in raw.get("added_tokens") or []}
        if model.get("unk_token") in full:
            required.add(full[model["unk_token"]])
        required |= _processor_ids(raw.get("post_processor"))
        if raw.get("padding"):
            required.add(int(raw["padding"]["pad_id"]))
        old_ids = sorted(keep | required)
        new = {old: i for i, old in enumerate(old_ids)}  # old id -> new id
        model["vocab"] = {t: new[i] for t, i in vocab.items() if i in new}
        for t in raw.get("added_tokens") or []:
            t["id"] = new[int(t["id"])]
        _renumber_processor(raw.get("post_processor"), new)
        if raw.get("padding"):
            raw["padding"]["pad_id"] = new[int(raw["padding"]["pad_id"])]
        tok = Tokenizer(Backend.from_str(json.dumps(raw)), self.kind, lowercase=self.lowercase,
                        model_max_length=self.model_max_length, special_tokens=dict(self._special_names))
        if tok.vocab_size != len(old_ids):  # a token with two ids, or an added token outside the vocabulary
            raise DataError(f"subset: this vocabulary does not number its {self.vocab_size} tokens one id "
                            f"each (kept {len(old_ids)} ids, the new vocabulary has {tok.vocab_size})")
        return tok, old_ids

    # --------------------------------------------------------------- queries
    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (the model's embedding rows)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def pad_id(self) -> int | None:
        """Padding id (eos for GPT-2-style tokenizers without a pad token)."""
        return self._ids.get("pad")

    @property
    def unk_id(self) -> int | None:
        return self._ids.get("unk")

    @property
    def cls_id(self) -> int | None:
        return self._ids.get("cls")

    @property
    def sep_id(self) -> int | None:
        return self._ids.get("sep")

    @property
    def mask_id(self) -> int | None:
        return self._ids.get("mask")

    @property
    def bos_id(self) -> int | None:
        return self._ids.get("bos")

    @property
    def eos_id(self) -> int | None:
        return self._ids.get("eos")

    @property
    def sentinel_ids(self) -> list[int]:
        """Ids of T5's sentinels: item i is the id of `<extra_id_i>` (descending ids in T5
        and in tokenizers zerolm trains); empty when there are none. Only an unbroken run
        from `<extra_id_0>` counts."""
        return list(self._sentinel_ids)

    @property
    def special_tokens(self) -> dict[str, str]:
        """Role -> token name, for the roles this tokenizer has."""
        return dict(self._special_names)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        """The vocabulary entry of id `i` (byte-level BPE: in GPT-2's byte symbols, "Ġthe")."""
        return self.backend.id_to_token(i)

    def piece_text(self, i: int) -> str:
        """What id `i` stands for, readable: byte-level BPE pieces decoded from their byte
        symbols ("Ġgripping" -> " gripping", "Ã©" -> "é"), with bytes that are not a whole
        UTF-8 character written `<0xE4 0xB8>`; WordPiece without its "##"; unigram with a
        space for its word-start "▁" ("▁gripping" -> " gripping"); a special token as its
        name."""
        tok = self.backend.id_to_token(i)
        if tok is None:
            return f"<id {i}: not in the vocabulary>"
        if i in self.special_ids:
            return tok
        if self.kind == "bpe":
            table = _byte_values()
            if all(c in table for c in tok):
                return readable_bytes(bytes(table[c] for c in tok))
            return tok
        if self.kind == "wordpiece":
            return tok[2:] if tok.startswith("##") else tok
        if self.kind == "char":
            return tok
        if self.kind == "unigram":
            return tok.replace(META, " ")
        return self.backend.decode([i], skip_special_tokens=False)

    def __repr__(self) -> str:
        model = type(self.backend.model).__name__
        return (f"Tokenizer(kind={self.kind!r}, model={model}, vocab_size={self.vocab_size}, "
                f"lowercase={self.lowercase}, model_max_length={self.model_max_length}, "
                f"specials={self._special_names})")

    # ------------------------------------------------------------- encoding
    def encode(self, text: str, pair: str | None = None, *, add_special_tokens: bool = True,
               max_length: int | None = None) -> list[int]:
        """Token ids of `text` (and `pair`, for sentence-pair tasks).

        `add_special_tokens` adds [CLS]/[SEP] for wordpiece and </s> for unigram (bpe and
        char add nothing).
        `max_length` truncates (the longer of a pair first) keeping the special tokens;
        None does not truncate, whatever `model_max_length` is.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode takes one string, got {type(text).__name__}; use encode_batch for lists")
        return self.encode_batch([text], None if pair is None else [pair],
                                 add_special_tokens=add_special_tokens,
                                 max_length=max_length)["input_ids"][0]

    def encode_batch(self, texts: Sequence[str] | Sequence[Sequence[str]],
                     pairs: Sequence[str] | Sequence[Sequence[str]] | None = None, *,
                     add_special_tokens: bool = True, max_length: int | None = None,
                     return_word_ids: bool = False, is_pretokenized: bool = False) -> dict[str, list]:
        """Encode many texts at once (in parallel, in Rust).

        Returns a dict with "input_ids" and "token_type_ids" (lists of int lists) and,
        with `return_word_ids`, "word_ids" (the word index of each token, None for
        special tokens), used to align word-level labels.

        With `is_pretokenized`, each text (and pair) is a list of words, as in a CoNLL
        file: the tokenizer never splits across them, and word ids index that list. A
        word that normalizes to nothing (a zero-width space) has no token. Byte-level
        BPE sees every word after the first with a leading space, so the pieces are
        those of the running text ("Ġworld"), as GPT-2's tokenizer with add_prefix_space;
        unigram marks every word's start with "▁", as in running text.
        """
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a list of strings, got one string; use encode")
        if pairs is not None and (isinstance(pairs, str) or len(pairs) != len(texts)):
            n = "a string" if isinstance(pairs, str) else f"{len(pairs)} pairs"
            raise ValueError(f"encode_batch needs one pair per text: got {len(texts)} texts and {n}")
        if is_pretokenized:
            texts = [self._words(t) for t in texts]
            pairs = None if pairs is None else [self._words(t) for t in pairs]
        inputs: list = list(texts) if pairs is None else list(zip(texts, pairs))
        kw = {"add_special_tokens": add_special_tokens, "is_pretokenized": is_pretokenized}
        if max_length is None:
            encs = self.backend.encode_batch(inputs, **kw)
        else:
            n_special = (self.backend.num_special_tokens_to_add(pairs is not None)
                         if add_special_tokens else 0)
            # below this the backend silently does not truncate at all
            if max_length < n_special + 1:
                raise ValueError(f"max_length={max_length} leaves no room for text beside the "
                                 f"{n_special} special tokens; use at least {n_special + 1}")
            with self._lock:
                self.backend.enable_truncation(max_length, strategy="longest_first")
                try:
                    encs = self.backend.encode_batch(inputs, **kw)
                finally:
                    self.backend.no_truncation()
        out: dict[str, list] = {"input_ids": [e.ids for e in encs],
                                "token_type_ids": [e.type_ids for e in encs]}
        if return_word_ids:
            out["word_ids"] = [e.word_ids for e in encs]
        return out

    def _words(self, words: Sequence[str]) -> list[str]:
        """One pre-split text for the backend (see `encode_batch(..., is_pretokenized=True)`)."""
        if isinstance(words, str):
            raise TypeError("with is_pretokenized=True each text is a list of words, got a string")
        if self.kind == "bpe":
            return [w if i == 0 else " " + w for i, w in enumerate(words)]
        return list(words)

    def pad(self, batch_ids: Sequence[Sequence[int]], *,
            token_type_ids: Sequence[Sequence[int]] | None = None,
            pad_to_multiple_of: int | None = None,
            max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Right-pad rows of ids into tensors.

        Rows are padded with `pad_id` to the longest row (dynamic padding), or to
        `max_length` when given (a longer row is an error: truncate when encoding), then
        up to a multiple of `pad_to_multiple_of`. Returns LongTensors "input_ids" and
        "attention_mask" (1 = real token, 0 = padding), both (B, T), and
        "token_type_ids" (0 on padding) when `token_type_ids` is given.
        """
        longest = max((len(r) for r in batch_ids), default=0)
        if max_length is not None and longest > max_length:
            raise ValueError(f"a row has {longest} tokens, more than max_length={max_length}; "
                             f"truncate when encoding (encode_batch(..., max_length=...))")
        n = longest if max_length is None else max_length
        if pad_to_multiple_of:
            n = -(-n // pad_to_multiple_of) * pad_to_multiple_of
        # without a pad token any id will do: the attention mask hides it
        pad = self.pad_id if self.pad_id is not None else 0
        ids = [list(r) + [pad] * (n - len(r)) for r in batch_ids]
        mask = [[1] * len(r) + [0] * (n - len(r)) for r in batch_ids]
        out = {"input_ids": torch.tensor(ids, dtype=torch.long).view(len(ids), n),
               "attention_mask": torch.tensor(mask, dtype=torch.long).view(len(ids), n)}
        if token_type_ids is not None:
            if len(token_type_ids) != len(batch_ids):
                raise ValueError(f"pad got {len(batch_ids)} rows of ids but {len(token_type_ids)} "
                                 f"rows of token_type_ids")
            types = [list(t) + [0] * (n - len(t)) for t in token_type_ids]
            out["token_type_ids"] = torch.tensor(types, dtype=torch.long).view(len(types), n)
        return out

    def __call__(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
                 max_length: int | None = None, add_special_tokens: bool = True,
                 pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
        """Encode and pad a batch: "input_ids", "attention_mask", "token_type_ids", (B, T)."""
        enc = self.encode_batch(texts, pairs, add_special_tokens=add_special_tokens,
                                max_length=max_length)
        return self.pad(enc["input_ids"], token_type_ids=enc["token_type_ids"],
                        pad_to_multiple_of=pad_to_multiple_of)

    def decode(self, ids: Sequence[int] | torch.Tensor, *, skip_special_tokens: bool = True) -> str:
        """Text of `ids` (a list or a 1-D tensor)."""
        return self.backend.decode(_as_list(ids), skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: Sequence[Sequence[int]] | torch.Tensor, *,
                     skip_special_tokens: bool = True) -> list[str]:
        """Texts of rows of ids (a list of lists or a 2-D tensor)."""
        rows = batch.tolist() if isinstance(batch, torch.Tensor) else [_as_list(b) for b in batch]
        return self.backend.decode_batch(rows, skip_special_tokens=skip_special_tokens)


# ------------------------------------------------------------------ helpers
@functools.cache
def _byte_values() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: symbol -> byte. Printable bytes stand for
    themselves; the others (space, control bytes, 0x7F-0xA0, 0xAD) are shifted to 256+."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in keep}
    n = 0
    for b in range(256):
        if b not in keep:
            table[chr(256 + n)] = b
            n += 1
    return table


def readable_bytes(data: bytes) -> str:
    """`data` as UTF-8 text, with each run of bytes that is not a whole character written
    as `<0xE4 0xB8>` (a BPE piece may hold part of a character)."""
    out: list[str] = []
    bad = bytearray()  # adjacent undecodable bytes, shown as one group
    while data:
        try:
            good, invalid, data = data.decode("utf-8"), b"", b""
        except UnicodeDecodeError as e:
            good, invalid, data = data[:e.start].decode("utf-8"), data[e.start:e.end], data[e.end:]
        if good and bad:
            out.append("<" + " ".join(f"0x{b:02X}" for b in bad) + ">")
            bad.clear()
        out.append(good)
        bad += invalid
    if bad:
        out.append("<" + " ".join(f"0x{b:02X}" for b in bad) + ">")
    return "".join(out)


def _bert_backend(model: models.Model, lowercase: bool) -> Backend:
    """A WordPiece backend that normalizes and splits text exactly as BERT does."""
    backend = Backend(model)
    # strip_accents=None: accents are stripped when (and only when) lower-casing, as in BERT
    backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=None, lowercase=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    return backend


def _unigram_backend(model: models.Model, lowercase: bool) -> Backend:
    """A unigram backend that splits text as T5's SentencePiece model does."""
    backend = Backend(model)
    # NFKC as T5's SentencePiece applies it: a precompiled character map, the one normalizer
    # Hugging Face's T5 tokenizer keeps from a tokenizer.json (it drops a plain NFKC). The
    # map lower-cases too when asked; the Lowercase after it changes nothing then, and says
    # to readers of the file (`_lowercases`) that this tokenizer lower-cases.
    nfkc = normalizers.Precompiled(precompiled_charsmap(lowercase))
    backend.normalizer = normalizers.Sequence([nfkc, normalizers.Lowercase()]) if lowercase else nfkc
    # as Hugging Face's T5 file: splitting on whitespace first drops leading, trailing and
    # repeated whitespace and line ends, as SentencePiece's remove_extra_whitespaces does;
    # "always" then marks the start of every word, the first too, with "▁"
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement=META, prepend_scheme="always", split=True)])
    backend.decoder = decoders.Metaspace(replacement=META, prepend_scheme="always", split=True)
    return backend


def _add_t5_template(backend: Backend) -> None:
    # T5 ends every input and target with </s>; a pair is A </s> B </s>, all of type 0
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>",
        special_tokens=[("</s>", backend.token_to_id("</s>"))])


def sentinel_token(i: int) -> str:
    """The name of sentinel `i` (T5's span corruption): `<extra_id_i>`."""
    return f"<extra_id_{i}>"


def _find_sentinels(vocab: dict[str, int]) -> list[int]:
    """Ids of `<extra_id_0>`, `<extra_id_1>`, ... for as long as the run is unbroken."""
    found = {int(m.group(1)): i for t, i in vocab.items()
             if t.startswith("<extra_id_") and (m := _SENTINEL.fullmatch(t))}
    ids: list[int] = []
    while len(ids) in found:
        ids.append(found[len(ids)])
    if len(ids) < len(found):
        log.warning("sentinel tokens <extra_id_N> are not numbered 0..%d without gaps; using the "
                    "first %d", len(found) - 1, len(ids))
    return ids


def _add_bert_template(backend: Backend) -> None:
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])


_SUBSETTABLE = ("WordPiece", "WordLevel")  # models whose split of kept text a vocabulary subset keeps


def _processor_ids(p: dict | None) -> set[int]:
    """Ids a tokenizer.json post-processor inserts ([CLS], [SEP]; a Sequence's too)."""
    if not p:
        return set()
    kind = p.get("type")
    if kind == "TemplateProcessing":
        return {int(i) for spec in (p.get("special_tokens") or {}).values() for i in spec["ids"]}
    if kind in ("BertProcessing", "RobertaProcessing"):  # "sep": [token, id], "cls": [token, id]
        return {int(p["sep"][1]), int(p["cls"][1])}
    if kind == "Sequence":
        return set().union(*(_processor_ids(q) for q in p.get("processors") or []))
    return set()


def _renumber_processor(p: dict | None, new: dict[int, int]) -> None:
    """Rewrite, in place, the ids `_processor_ids` finds in `p` (old id -> new id)."""
    if not p:
        return
    kind = p.get("type")
    if kind == "TemplateProcessing":
        for spec in (p.get("special_tokens") or {}).values():
            spec["ids"] = [new[int(i)] for i in spec["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            p[key] = [p[key][0], new[int(p[key][1])]]
    elif kind == "Sequence":
        for q in p.get("processors") or []:
            _renumber_processor(q, new)


def _char_backend(texts: Iterable[str], lowercase: bool) -> Backend:
    """A character vocabulary built in Python: ids follow sorted character order (as
    nanoGPT's), newlines and spaces included, then the special tokens."""
    chars: set[str] = set()
    for text in texts:
        chars.update(text.lower() if lowercase else text)
    vocab = {c: i for i, c in enumerate(sorted(chars))}
    for s in CHAR_SPECIALS:
        vocab[s] = len(vocab)
    backend = Backend(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    if lowercase:
        backend.normalizer = normalizers.Lowercase()
    # every character is its own "word"; [\s\S] matches newlines too, unlike "."
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()  # join tokens with nothing between them
    backend.add_special_tokens(CHAR_SPECIALS)
    return backend


def _texts(paths: list[Path], *, keep_ends: bool, skip_blank: bool = True,
           columns: Sequence[str] = ("text",)) -> Iterator[str]:
    """Texts of the files: lines of plain text, or the `columns` of a table
    (.tsv/.csv/.jsonl), as `zerolm.data.corpus` reads them for the model, so the
    tokenizer learns from the same text. Empty or non-UTF-8 files raise DataError."""
    for path in paths:
        for column in columns if is_table(path) else columns[:1]:  # plain text has no columns
            for _, text in iter_records(path, text_column=column, keep_ends=keep_ends):
                if text.strip() or not skip_blank:
                    yield text


def _read_configs(directory: Path) -> dict[str, Any]:
    """tokenizer_config.json, then special_tokens_map.json for keys the first lacks."""
    conf: dict[str, Any] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        f = directory / name
        if not f.is_file():
            continue
        try:
            d = json.loads(f.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as e:
            raise DataError(f"{f}:{e.lineno}: invalid JSON ({e.msg}); fix or delete the file") from None
        if not isinstance(d, dict):
            raise DataError(f"{f}: expected a JSON object, found {type(d).__name__}")
        for k, v in d.items():
            conf.setdefault(k, v)
    return conf


def _token_name(value: Any) -> str | None:
    """A special token as Hugging Face writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _guess_kind(raw: dict) -> str:
    """zerolm's kind for a tokenizer.json written elsewhere."""
    model = (raw.get("model") or {}).get("type")
    if model == "WordPiece":
        return "wordpiece"
    if model == "BPE" and '"ByteLevel"' in json.dumps(raw.get("pre_tokenizer") or {}):
        return "bpe"
    if model == "WordLevel" and (raw.get("decoder") or {}).get("type") == "Fuse":
        return "char"
    if model == "Unigram" and '"Metaspace"' in json.dumps(raw.get("pre_tokenizer") or {}):
        # T5's layout (mT5's and Flan-T5's too); other unigram models (ALBERT, XLNet) stay "other"
        vocab = (raw.get("model") or {}).get("vocab") or []
        if [v[0] for v in vocab[:len(T5_SPECIALS)]] == T5_SPECIALS:
            return "unigram"
    return "other"


def _lowercases(normalizer: dict | None) -> bool:
    """Whether a tokenizer.json normalizer (possibly a Sequence) lower-cases."""
    if not normalizer:
        return False
    kind = normalizer.get("type")
    if kind == "Lowercase":
        return True
    if kind == "BertNormalizer":
        return bool(normalizer.get("lowercase"))
    if kind == "Sequence":
        return any(_lowercases(n) for n in normalizer.get("normalizers") or [])
    return False


def _as_list(ids: Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"decode takes a 1-D sequence of ids, got a tensor of shape "
                             f"{tuple(ids.shape)}; use decode_batch for 2-D")
        return ids.tolist()
    return [int(i) for i in ids]
