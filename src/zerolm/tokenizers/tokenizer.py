"""Tokenizers: train WordPiece, byte-level BPE or character vocabularies, load existing
ones (zerolm or Hugging Face files), encode with truncation and dynamic padding, decode.

A thin layer over Hugging Face `tokenizers` (Rust, fast); zerolm adds the special-token
bookkeeping, padding to tensors and HF-compatible files on disk.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as Backend

from zerolm.data.text import iter_lines, iter_texts
from zerolm.errors import DataError

log = logging.getLogger(__name__)

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
EOT = "<|endoftext|>"
CHAR_SPECIALS = ["<unk>", EOT]

_FALLBACKS = {
    "pad": ["[PAD]", "<pad>"],
    "unk": ["[UNK]", "<unk>"],
    "cls": ["[CLS]", "<s>"],
    "sep": ["[SEP]", "</s>"],
    "mask": ["[MASK]", "<mask>"],
    "bos": [EOT, "<s>", "[CLS]"],
    "eos": [EOT, "</s>", "[SEP]"],
}


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


class Tokenizer:
    """Text <-> token ids. Build with `Tokenizer.train(...)` or `Tokenizer.load(path)`."""

    def __init__(self, backend: Backend, kind: str, *, lowercase: bool = False,
                 model_max_length: int | None = None, special_tokens: dict[str, str] | None = None):
        backend.no_padding()
        backend.no_truncation()
        self.backend = backend
        self.kind = kind
        self.lowercase = lowercase
        self.model_max_length = model_max_length
        vocab = backend.get_vocab(with_added_tokens=True)
        names = dict(special_tokens or {})
        self._special_names: dict[str, str] = {}
        for role, cands in _FALLBACKS.items():
            for tok in ([names[role]] if names.get(role) else []) + cands:
                if tok in vocab:
                    self._special_names[role] = tok
                    break
        if "pad" not in self._special_names and "eos" in self._special_names:
            self._special_names["pad"] = self._special_names["eos"]  # GPT-2 style: pad with eos
        added = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
        self.special_ids = frozenset(vocab[t] for t in added | set(self._special_names.values())
                                     if t in vocab)

    # ---------------------------------------------------------------- training
    @classmethod
    def train(cls, kind: str, files: Iterable[str | os.PathLike], vocab_size: int, *,
              min_frequency: int = 2, lowercase: bool | None = None,
              show_progress: bool = False) -> Tokenizer:
        files = [Path(f) for f in files]
        if not files:
            raise DataError("no training files given for the tokenizer")
        if kind == "wordpiece":
            lower = True if lowercase is None else lowercase
            tok = Backend(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
            tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                        strip_accents=None, lowercase=lower)
            tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
            tok.decoder = decoders.WordPiece(prefix="##")
            trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                                special_tokens=BERT_SPECIALS,
                                                continuing_subword_prefix="##",
                                                show_progress=show_progress)
            tok.train_from_iterator(iter_texts(files), trainer=trainer)
            cls._bert_post_processor(tok)
            return cls(tok, "wordpiece", lowercase=lower)
        if kind == "bpe":
            lower = bool(lowercase)
            tok = Backend(models.BPE())
            if lower:
                tok.normalizer = normalizers.Lowercase()
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                          special_tokens=[EOT],
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                          show_progress=show_progress)
            # line ends are text for a causal LM: train on whole lines with their "\n"
            tok.train_from_iterator(_lines_with_ends(files), trainer=trainer)
            return cls(tok, "bpe", lowercase=lower)
        if kind == "char":
            lower = bool(lowercase)
            chars: set[str] = set()
            for f in files:
                for _, line in iter_lines(f, keep_ends=True):
                    chars.update(line.lower() if lower else line)
            vocab = {c: i for i, c in enumerate(sorted(chars))}
            for s in CHAR_SPECIALS:
                vocab[s] = len(vocab)
            tok = Backend(models.WordLevel(vocab=vocab, unk_token="<unk>"))
            if lower:
                tok.normalizer = normalizers.Lowercase()
            tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
            tok.decoder = decoders.Fuse()
            tok.add_special_tokens(CHAR_SPECIALS)
            return cls(tok, "char", lowercase=lower)
        raise ValueError(f"unknown tokenizer kind {kind!r}: use wordpiece, bpe or char")

    @staticmethod
    def _bert_post_processor(tok: Backend) -> None:
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])

    # ------------------------------------------------------------ load / save
    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """From a directory (tokenizer.json, or a BERT vocab.txt) or a tokenizer.json file."""
        p = Path(path)
        directory = p if p.is_dir() else p.parent
        tj = p if p.is_file() else p / "tokenizer.json"
        conf: dict = {}
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            f = directory / name
            if f.exists():
                try:
                    d = json.loads(f.read_text(encoding="utf-8"))
                except json.JSONDecodeError as e:
                    raise DataError(f"{f}: invalid JSON ({e.msg} at line {e.lineno})") from None
                conf.update({k: v for k, v in d.items() if k not in conf})
        specials = {}
        for role in ("pad", "unk", "cls", "sep", "mask", "bos", "eos"):
            v = conf.get(f"{role}_token")
            if isinstance(v, dict):
                v = v.get("content")
            if isinstance(v, str):
                specials[role] = v
        max_len = conf.get("model_max_length")
        max_len = int(max_len) if isinstance(max_len, (int, float)) and max_len < 1e9 else None
        if tj.is_file():
            try:
                backend = Backend.from_file(str(tj))
            except Exception as e:  # the Rust library raises a plain Exception
                raise DataError(f"{tj}: not a valid tokenizer.json ({e})") from None
            raw = json.loads(tj.read_text(encoding="utf-8"))
            trunc = raw.get("truncation") or {}
            if trunc.get("max_length") and max_len is None:
                max_len = int(trunc["max_length"])
            kind = conf.get("zerolm_kind") or _guess_kind(raw)
            lower = conf.get("do_lower_case")
            if lower is None:
                norm = json.dumps(raw.get("normalizer") or {})
                lower = '"lowercase": true' in norm or '"Lowercase"' in norm
            return cls(backend, kind, lowercase=bool(lower), model_max_length=max_len, special_tokens=specials)
        vocab = directory / "vocab.txt"
        if vocab.is_file():
            lower = conf.get("do_lower_case", True)
            backend = Backend(models.WordPiece.from_file(str(vocab), unk_token=specials.get("unk", "[UNK]")))
            backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                            strip_accents=None, lowercase=bool(lower))
            backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
            backend.decoder = decoders.WordPiece(prefix="##")
            present = [t for t in BERT_SPECIALS if backend.token_to_id(t) is not None]
            backend.add_special_tokens(present)
            if backend.token_to_id("[CLS]") is not None and backend.token_to_id("[SEP]") is not None:
                cls._bert_post_processor(backend)
            return cls(backend, "wordpiece", lowercase=bool(lower), model_max_length=max_len,
                       special_tokens=specials)
        raise DataError(f"{p}: no tokenizer here (expected tokenizer.json or vocab.txt)")

    def save(self, directory: str | os.PathLike) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        _atomic_write(d / "tokenizer.json", self.backend.to_str(pretty=True))
        tclass = {"wordpiece": "BertTokenizerFast", "bpe": "GPT2TokenizerFast"}.get(
            self.kind, "PreTrainedTokenizerFast")
        specials = {f"{role}_token": tok for role, tok in self._special_names.items()}
        conf = {"tokenizer_class": tclass, "do_lower_case": self.lowercase, "zerolm_kind": self.kind,
                "model_max_length": self.model_max_length or 1_000_000_000_000_000_019_884_624_838_656,
                **specials}
        _atomic_write(d / "tokenizer_config.json", json.dumps(conf, indent=2))
        _atomic_write(d / "special_tokens_map.json", json.dumps(specials, indent=2))
        if self.kind == "wordpiece":
            vocab = self.backend.get_vocab(with_added_tokens=True)
            ordered = sorted(vocab.items(), key=lambda kv: kv[1])
            _atomic_write(d / "vocab.txt", "".join(t + "\n" for t, _ in ordered))
        return d

    # --------------------------------------------------------------- queries
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def _id(self, role: str) -> int | None:
        name = self._special_names.get(role)
        return None if name is None else self.backend.token_to_id(name)

    pad_id = property(lambda self: self._id("pad"))
    unk_id = property(lambda self: self._id("unk"))
    cls_id = property(lambda self: self._id("cls"))
    sep_id = property(lambda self: self._id("sep"))
    mask_id = property(lambda self: self._id("mask"))
    bos_id = property(lambda self: self._id("bos"))
    eos_id = property(lambda self: self._id("eos"))

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(i)

    def __repr__(self) -> str:
        return (f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, lowercase={self.lowercase}, "
                f"specials={self._special_names})")

    # ------------------------------------------------------------- encoding
    def encode(self, text: str, pair: str | None = None, *, add_special_tokens: bool = True,
               max_length: int | None = None) -> list[int]:
        return self.encode_batch([text], None if pair is None else [pair],
                                 add_special_tokens=add_special_tokens, max_length=max_length)["input_ids"][0]

    def encode_batch(self, texts: list[str], pairs: list[str] | None = None, *,
                     add_special_tokens: bool = True, max_length: int | None = None,
                     return_word_ids: bool = False) -> dict[str, list]:
        inputs = list(texts) if pairs is None else list(zip(texts, pairs))
        if max_length:
            self.backend.enable_truncation(max_length, strategy="longest_first")
        try:
            encs = self.backend.encode_batch(inputs, add_special_tokens=add_special_tokens)
        finally:
            if max_length:
                self.backend.no_truncation()
        out: dict[str, list] = {"input_ids": [e.ids for e in encs],
                                "token_type_ids": [e.type_ids for e in encs]}
        if return_word_ids:
            out["word_ids"] = [e.word_ids for e in encs]
        return out

    def pad(self, batch_ids: list[list[int]], *, token_type_ids: list[list[int]] | None = None,
            pad_to_multiple_of: int | None = None, max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Right-pad to the longest row (dynamic padding)."""
        n = max((len(r) for r in batch_ids), default=0)
        if max_length:
            n = max(n, max_length)
        if pad_to_multiple_of:
            n = -(-n // pad_to_multiple_of) * pad_to_multiple_of
        pad = self.pad_id if self.pad_id is not None else 0
        ids = torch.full((len(batch_ids), n), pad, dtype=torch.long)
        mask = torch.zeros((len(batch_ids), n), dtype=torch.long)
        types = torch.zeros((len(batch_ids), n), dtype=torch.long) if token_type_ids is not None else None
        for i, row in enumerate(batch_ids):
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, :len(row)] = 1
            if types is not None:
                types[i, :len(row)] = torch.tensor(token_type_ids[i], dtype=torch.long)
        out = {"input_ids": ids, "attention_mask": mask}
        if types is not None:
            out["token_type_ids"] = types
        return out

    def __call__(self, texts: list[str], pairs: list[str] | None = None, *, max_length: int | None = None,
                 add_special_tokens: bool = True, pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
        enc = self.encode_batch(texts, pairs, add_special_tokens=add_special_tokens, max_length=max_length)
        return self.pad(enc["input_ids"], token_type_ids=enc["token_type_ids"],
                        pad_to_multiple_of=pad_to_multiple_of)

    def decode(self, ids: list[int], *, skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: list[list[int]], *, skip_special_tokens: bool = True) -> list[str]:
        return self.backend.decode_batch([list(b) for b in batch], skip_special_tokens=skip_special_tokens)


def _lines_with_ends(files: list[Path]):
    for f in files:
        for _, line in iter_lines(f, keep_ends=True):
            yield line


def _guess_kind(raw: dict) -> str:
    model = (raw.get("model") or {}).get("type")
    if model == "WordPiece":
        return "wordpiece"
    if model == "BPE" and "ByteLevel" in json.dumps(raw.get("pre_tokenizer") or {}):
        return "bpe"
    if model == "WordLevel" and (raw.get("decoder") or {}).get("type") == "Fuse":
        return "char"
    return (model or "unknown").lower()
