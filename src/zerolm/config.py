"""Run configuration: typed dataclasses loaded from YAML, overridden by `a.b=c`.

Every key is checked: an unknown one is an error naming the closest valid key, a value
of the wrong type is an error naming the key and the expected type. The resolved config
is saved beside every checkpoint, so a run can always be reproduced and resumed.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from zerolm.errors import ConfigError
from zerolm.models.config import ModelConfig


@dataclass
class TokenizerConfig:
    path: str | None = None  # an existing tokenizer directory; if unset, one is trained first
    kind: Literal["wordpiece", "bpe", "char"] = "bpe"  # what to train when `path` is unset
    vocab_size: int = 8192  # target vocabulary size (char: ignored, every character seen)
    min_frequency: int = 2  # a merge / word piece must occur this often to enter the vocabulary
    lowercase: bool | None = None  # None: wordpiece lower-cases, bpe and char keep case
    files: list[str] = field(default_factory=list)  # training text; defaults to data.train


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)  # text files (plain or .gz); paths resolve against $ZEROLM_DATA
    val: list[str] = field(default_factory=list)  # validation text files; if empty, val_fraction is held out
    val_fraction: float = 0.1  # with no val files: the last fraction of the training tokens is held out
    block_size: int = 128  # tokens per training sequence (<= model.max_seq_len)
    cache_dir: str | None = None  # token cache; default $ZEROLM_CACHE or ~/.cache/zerolm


@dataclass
class TaskConfig:
    name: Literal["clm", "mlm"] = "clm"  # clm: next-token prediction (gpt); mlm: masked LM (bert)
    mlm_probability: float = 0.15  # mlm: share of tokens selected for prediction
    mask_replace: float = 0.8  # mlm: of the selected, share replaced by [MASK]
    random_replace: float = 0.1  # mlm: of the selected, share replaced by a random token (rest unchanged)
    whole_word_mask: bool = False  # mlm: mask all pieces of a word together
    sentence_objective: Literal["none", "nsp", "sop"] = "none"  # mlm: next-sentence or sentence-order
    short_seq_prob: float = 0.1  # mlm: share of examples with a shorter random target length (as BERT)


@dataclass
class OptimConfig:
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.01  # decoupled (AdamW) weight decay on the decayed group
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam beta1, beta2
    eps: float = 1e-8  # Adam epsilon
    no_decay: list[str] = field(default_factory=lambda: ["bias", "norm", "embedding"])  # groups kept out of weight decay


@dataclass
class ScheduleConfig:
    name: Literal["cosine", "linear", "constant"] = "cosine"  # shape after warmup
    warmup_steps: int = 100  # linear warmup from 0 to lr
    min_lr: float = 0.0  # floor of the decay (cosine / linear end here at max_steps)
    decay_steps: int | None = None  # steps over which to decay; default train.max_steps


@dataclass
class EarlyStoppingConfig:
    metric: str = "val_loss"  # a metric the evaluation reports
    mode: Literal["min", "max"] = "min"  # whether smaller or larger is better
    patience: int = 0  # evaluations without improvement before stopping; 0 disables


@dataclass
class TrainConfig:
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 32  # sequences per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step (per process)
    clip_grad: float = 1.0  # max global gradient norm; 0 disables
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast is for GPUs (100x slower on this CPU)
    device: str = "auto"  # auto: cuda if available, else cpu
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    seed: int = 1337  # seeds init, data order, masking and dropout
    log_every: int = 10  # steps between log lines and metrics.jsonl rows
    eval_every: int = 250  # steps between evaluations on the validation split; 0: only at the end
    eval_batches: int = 0  # cap on validation batches per evaluation; 0: the whole split
    save_every: int = 500  # steps between resumable checkpoints; 0: only at the end
    keep_checkpoints: int = 2  # resumable checkpoints kept on disk (the newest)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    progress: bool = True  # progress bar on a terminal
    epochs: float = 0.0  # fine-tuning: if > 0, max_steps = epochs x optimizer steps per epoch


@dataclass
class RunConfig:
    out_dir: str = "runs/default"  # where checkpoints, metrics and plots go
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> RunConfig:
        m, d, t = self.model, self.data, self.task
        if d.block_size > m.max_seq_len:
            raise ConfigError(f"data.block_size ({d.block_size}) exceeds model.max_seq_len ({m.max_seq_len})")
        if t.name == "clm" and m.family != "gpt":
            raise ConfigError("task.name 'clm' needs model.family 'gpt'")
        if t.name == "mlm" and m.family != "bert":
            raise ConfigError("task.name 'mlm' needs model.family 'bert'")
        if t.sentence_objective != "none" and not m.sentence_head:
            raise ConfigError(f"task.sentence_objective '{t.sentence_objective}' needs model.sentence_head: true")
        if not 0 < t.mlm_probability < 1 or t.mask_replace + t.random_replace > 1:
            raise ConfigError("task: need 0 < mlm_probability < 1 and mask_replace + random_replace <= 1")
        if not d.train:
            raise ConfigError("data.train: list at least one training text file")
        if not d.val and not 0 < d.val_fraction < 1:
            raise ConfigError("data.val_fraction must be in (0, 1) when data.val is empty")
        tr = self.train
        for name in ("max_steps", "batch_size", "grad_accum"):
            if getattr(tr, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class LabelledDataConfig:
    train: str = ""  # labelled file; relative paths resolve against $ZEROLM_DATA (pkg: for shipped data)
    dev: str = ""  # validation file in the same format
    # classify: a table (.tsv / .csv / .jsonl, optionally .gz) with named columns
    text_column: str = "text"  # classify: column with the (first) text
    pair_column: str | None = None  # classify: column with the second text of a sentence pair
    label_column: str = "label"  # classify: column with the class name
    # tag: CoNLL column file, one token per line, a blank line between sentences
    token_column: int = 0  # tag: column index of the word (columns split on tabs, else spaces)
    tag_column: int = -1  # tag: column index of the tag (-1: the last one)
    scheme: Literal["iob2", "iob1"] = "iob2"  # tag: the file's tagging scheme; iob1 is converted to iob2
    # clm: JSONL with one prompt / completion pair per line
    prompt_column: str = "prompt"  # clm: the conditioning text (no loss on it)
    completion_column: str = "completion"  # clm: the text the model learns to produce
    max_length: int = 128  # longer inputs are truncated (the count is reported)


@dataclass
class StrategyConfig:
    name: Literal["full", "freeze", "head_only", "bitfit", "lora", "adapter", "prompt", "prefix"] = "full"  # which weights train
    freeze_layers: int = 0  # freeze: also freeze the bottom k blocks (embeddings are always frozen)
    lora_rank: int = 8  # lora: rank r of the update B @ A
    lora_alpha: float = 16.0  # lora: the update is scaled by alpha / r
    lora_dropout: float = 0.0  # lora: dropout on the LoRA path
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])  # module names to adapt
    adapter_size: int = 64  # adapter: bottleneck width
    prompt_length: int = 20  # prompt / prefix: number of virtual tokens (prompt: they take input positions)


@dataclass
class FinetuneTaskConfig:
    name: Literal["classify", "tag", "clm"] = "classify"  # sentence (pair) classification, token tagging, prompt -> completion
    class_weights: list[float] = field(default_factory=list)  # classify: per label (sorted names); empty: none
    head_dropout: float = 0.1  # classify / tag: dropout before the linear head
    pooling: Literal["first", "mean"] = "first"  # classify: BERT pooled [CLS] / GPT last token, or the mean over tokens
    crf: bool = False  # tag: a linear-chain CRF on top (forward-algorithm loss, Viterbi decoding)


@dataclass
class FinetuneConfig:
    out_dir: str = "runs/finetune"  # where checkpoints, metrics, reports and plots go
    init: str | None = None  # zerolm or Hugging Face model directory, or python:MODULE; None: from scratch
    reinit: bool = False  # take only the architecture and tokenizer of `init`, with fresh random weights (a baseline)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(family="bert"))  # only when init is None
    tokenizer: TokenizerConfig = field(default_factory=lambda: TokenizerConfig(kind="wordpiece"))  # idem
    data: LabelledDataConfig = field(default_factory=LabelledDataConfig)
    task: FinetuneTaskConfig = field(default_factory=FinetuneTaskConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-5))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="linear", warmup_steps=0))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        batch_size=32, eval_every=0, save_every=0, early_stopping=EarlyStoppingConfig("val_accuracy", "max", 0)))

    def validate(self) -> FinetuneConfig:
        if not self.data.train or not self.data.dev:
            raise ConfigError("data.train and data.dev: give the labelled training and validation files")
        if self.init is None and not self.tokenizer.files and not self.tokenizer.path:
            raise ConfigError("from scratch (init: null) needs tokenizer.path or tokenizer.files")
        if self.reinit and not self.init:
            raise ConfigError("reinit: true needs init: the model whose architecture and tokenizer to take")
        t, s = self.task, self.strategy
        if t.crf and t.name != "tag":
            raise ConfigError(f"task.crf needs task.name 'tag', got {t.name!r}")
        if t.class_weights and t.name != "classify":
            raise ConfigError(f"task.class_weights needs task.name 'classify', got {t.name!r}")
        if s.name in ("prompt", "prefix") and s.prompt_length < 1:
            raise ConfigError(f"strategy.prompt_length must be >= 1 for {s.name} tuning")
        if self.init is None and t.name == "clm" and self.model.family != "gpt":
            raise ConfigError("task.name 'clm' needs a gpt model (model.family: gpt)")
        return self


# ---------------------------------------------------------------- loading, validation


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check (and gently coerce: int -> float, str -> list) `value` against type hint `tp`."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{key}: {value!r} is not one of {list(allowed)}{hint}")
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in data.items():
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{prefix}{k}'{hint}")
        kwargs[k] = _convert(v, hints[k], prefix + k)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, cls: type) -> None:
    parts = dotted.split(".")
    node, cur_cls, prefix = tree, cls, ""
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(cur_cls)] if dataclasses.is_dataclass(cur_cls) else []
        if part not in names:
            close = difflib.get_close_matches(part, names, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{prefix}{part}' in override '{dotted}'{hint}")
        if i == len(parts) - 1:
            node[part] = value
        else:
            cur_cls = typing.get_type_hints(cur_cls)[part]
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
            prefix += part + "."


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    out = []
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r} must look like key.sub=value (e.g. train.max_steps=100)")
        k, v = o.split("=", 1)
        try:
            out.append((k.strip(), yaml.safe_load(v) if v.strip() else ""))
        except yaml.YAMLError:
            out.append((k.strip(), v))
    return out


def _read_tree(p: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config as a dict. A top-level `base: other.yaml` (relative to this file) is
    read first and this file's keys are merged over it, section by section, so a variant
    recipe states only what differs."""
    if not p.exists():
        raise ConfigError(f"{p}: config file not found")
    if p.resolve() in seen:
        raise ConfigError(f"{p}: `base` chain loops back to this file")
    try:
        tree = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{p}: a config must be a mapping of sections")
    base = tree.pop("base", None)
    if base is None:
        return tree
    if not isinstance(base, str):
        raise ConfigError(f"{p}: base must be the path of another config, got {base!r}")
    return _merge(_read_tree(p.parent / base, (*seen, p.resolve())), tree)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                cls: type | None = None) -> Any:
    """Load a YAML config (or the defaults when `path` is None) and apply `a.b=c` overrides.

    `cls` None picks by content: a config with `init` (a fine-tuning recipe) is a
    FinetuneConfig, anything else a pretraining RunConfig."""
    tree: dict[str, Any] = _read_tree(Path(path)) if path is not None else {}
    if cls is None:
        cls = FinetuneConfig if "init" in tree else RunConfig
    for key, value in parse_overrides(overrides or []):
        _set_dotted(tree, key, value, cls)
    try:
        cfg = _build(cls, tree)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None
    return cfg.validate() if hasattr(cfg, "validate") else cfg


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
