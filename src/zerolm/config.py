"""Run configuration: typed dataclasses loaded from YAML, overridden by `a.b=c`.

Every key is checked: an unknown one is an error naming the closest valid key, a value
of the wrong type is an error naming the key and the expected type. The resolved config
is saved beside every checkpoint, so a run can always be reproduced and resumed.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from zerolm.errors import ConfigError
from zerolm.models.config import FAMILIES, ModelConfig

log = logging.getLogger(__name__)


@dataclass
class TokenizerConfig:
    path: str | None = None  # an existing tokenizer directory; if unset, one is trained first
    kind: Literal["wordpiece", "bpe", "char", "unigram"] = "bpe"  # what to train when `path` is unset (unigram: T5)
    vocab_size: int = 8192  # target vocabulary size (char: ignored, every character seen)
    min_frequency: int = 2  # a merge / word piece must occur this often to enter the vocabulary
    lowercase: bool | None = None  # None: wordpiece lower-cases, bpe and char keep case
    files: list[str] = field(default_factory=list)  # training text; defaults to data.train
    columns: list[str] = field(default_factory=lambda: ["text"])  # tables among the files: the columns read (Multi30k: [en, de])
    sentinels: int = 0  # unigram / bpe: <extra_id_0..N-1> at the end of the vocabulary, for span corruption (T5: 100)


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)  # text files (plain or .gz); paths resolve against $ZEROLM_DATA
    val: list[str] = field(default_factory=list)  # validation text files; if empty, val_fraction is held out
    val_fraction: float = 0.1  # with no val files: the last fraction of the training tokens is held out
    block_size: int = 128  # tokens per training sequence (<= model.max_seq_len)
    columns: list[str] = field(default_factory=lambda: ["text"])  # tables among the files: the columns read, each a line (Multi30k: [en, de])
    cache_dir: str | None = None  # token cache; default $ZEROLM_CACHE or ~/.cache/zerolm


@dataclass
class TaskConfig:
    name: Literal["clm", "mlm", "span"] = "clm"  # clm: next-token prediction (gpt); mlm: masked LM (bert); span: T5 span corruption
    mlm_probability: float = 0.15  # mlm: share of tokens selected for prediction
    mask_replace: float = 0.8  # mlm: of the selected, share replaced by [MASK]
    random_replace: float = 0.1  # mlm: of the selected, share replaced by a random token (rest unchanged)
    whole_word_mask: bool = False  # mlm: mask all pieces of a word together
    sentence_objective: Literal["none", "nsp", "sop"] = "none"  # mlm: next-sentence or sentence-order
    short_seq_prob: float = 0.1  # mlm: share of examples with a shorter random target length (as BERT)
    noise_density: float = 0.15  # span: share of tokens corrupted
    mean_span_length: float = 3.0  # span: mean length of a corrupted span, in tokens


@dataclass
class OptimConfig:
    # adamw; adafactor (Shazeer & Stern 2018, T5's optimizer): factored second moments and
    # steps relative to each weight's RMS, which T5's initialisation assumes (lr 1e-2)
    name: Literal["adamw", "adafactor"] = "adamw"
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
    # pretraining: the run's length in optimizer steps (>= 1). Fine-tuning: 0 (the default
    # there) means not set and train.epochs gives the length; > 0 alone gives the length,
    # and beside train.epochs it caps them (the smaller wins)
    max_steps: int = 1000
    batch_size: int = 32  # sequences per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step (per process)
    clip_grad: float = 1.0  # max global gradient norm; 0 disables
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast is for GPUs (100x slower on this CPU)
    device: str = "auto"  # auto: cuda if available, else cpu
    threads: int = 0  # torch CPU threads per process; 0: the CPUs this process may use (affinity,
    # cgroup quota) divided by the processes torchrun starts on this machine
    seed: int = 1337  # seeds init, data order, masking and dropout
    log_every: int = 10  # steps between log lines and metrics.jsonl rows
    eval_every: int = 250  # steps between evaluations on the validation split; 0: only at the end
    eval_batches: int = 0  # cap on validation batches per evaluation; 0: the whole split
    save_every: int = 500  # steps between resumable checkpoints; 0: only at the end
    keep_checkpoints: int = 2  # resumable checkpoints kept on disk (the newest)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    progress: bool = True  # progress bar on a terminal
    # fine-tuning only: passes over the training data (fractions allowed); the length is
    # ceil(epochs x optimizer steps per epoch), capped by train.max_steps when that is > 0
    epochs: float = 0.0
    # when resuming, a damaged newest checkpoint (truncated file, broken trainer_state.json):
    # "previous" warns, naming the file, and resumes from the one before; "stop" fails
    resume_bad_checkpoint: Literal["previous", "stop"] = "previous"
    # write final/ (the last step's model) at the end; false keeps only best/, except for a
    # run with no best/ (no evaluation), whose final/ is its only model
    keep_final: bool = True
    # keep the resumable checkpoints once the run has finished (an interrupted run always
    # keeps them); false deletes them at the very end, after best/ and final/ are written
    keep_checkpoints_when_done: bool = True


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
        if t.name != FAMILIES[m.family]:  # each family pretrains with its own objective
            trains = [f for f, objective in FAMILIES.items() if objective == t.name]
            raise ConfigError(f"task.name {t.name!r} needs model.family {trains[0]!r}" if trains else
                              f"model.family {m.family!r} pretrains with task.name {FAMILIES[m.family]!r}, "
                              f"got {t.name!r}")
        if t.sentence_objective != "none" and not m.sentence_head:
            raise ConfigError(f"task.sentence_objective '{t.sentence_objective}' needs model.sentence_head: true")
        if not 0 < t.mlm_probability < 1 or t.mask_replace + t.random_replace > 1:
            raise ConfigError("task: need 0 < mlm_probability < 1 and mask_replace + random_replace <= 1")
        if not 0 < t.noise_density < 1:
            raise ConfigError(f"task.noise_density must be in (0, 1), got {t.noise_density} (T5 uses 0.15)")
        if t.mean_span_length < 1:
            raise ConfigError(f"task.mean_span_length must be >= 1 token, got {t.mean_span_length} (T5 uses 3)")
        tc = self.tokenizer
        if tc.sentinels < 0 or (tc.sentinels and tc.kind not in ("unigram", "bpe")):
            raise ConfigError(f"tokenizer.sentinels={tc.sentinels}: sentinel tokens are added to a unigram or "
                              f"bpe tokenizer only (kind is {tc.kind!r}), and their number must be >= 0")
        if not d.train:
            raise ConfigError("data.train: list at least one training text file")
        if not d.val and not 0 < d.val_fraction < 1:
            raise ConfigError("data.val_fraction must be in (0, 1) when data.val is empty")
        if d.block_size < 1:
            raise ConfigError(f"data.block_size must be >= 1, got {d.block_size}")
        tr = self.train
        if tr.max_steps < 1:
            raise ConfigError(f"train.max_steps must be >= 1 (the pretraining run's length in "
                              f"optimizer steps), got {tr.max_steps}")
        if tr.epochs:
            raise ConfigError(f"train.epochs ({tr.epochs:g}) is for fine-tuning; a pretraining "
                              f"run's length is train.max_steps: remove train.epochs")
        _check_optim_schedule(self.optim, self.schedule)
        _check_train(tr)
        _log_warnings(self)
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
    source_column: str = "source"  # seq2seq: the text read (Multi30k en -> de: "en")
    target_column: str = "target"  # seq2seq: the text written ("de")
    max_target_length: int = 128  # seq2seq: longer targets are truncated (the count is reported)
    max_length: int = 128  # longer inputs are truncated (the count is reported)


@dataclass
class FreezeConfig:
    layers: int = 0  # also freeze the bottom k blocks (the embeddings are always frozen)


@dataclass
class LoraConfig:
    rank: int = 8  # rank r of the update B @ A
    alpha: float = 16.0  # the update is scaled by alpha / r
    dropout: float = 0.0  # dropout on the LoRA path
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])  # module names to adapt


@dataclass
class AdapterConfig:
    size: int = 64  # bottleneck width of each adapter


@dataclass
class PromptConfig:
    length: int = 20  # virtual tokens (prompt tuning: they take input positions; prefix: per layer)


@dataclass
class StrategyConfig:
    """Which weights train (`name`), and each strategy's own settings in its own section:
    `strategy.lora.rank`, `strategy.freeze.layers`, `strategy.adapter.size`,
    `strategy.prompt.length`, `strategy.prefix.length`."""

    # which weights train: a name in zerolm.peft's registry (full, freeze, head_only, bitfit,
    # lora, adapter, prompt, prefix), checked before a run starts
    name: str = "full"
    freeze: FreezeConfig = field(default_factory=FreezeConfig)  # freeze: embeddings + bottom blocks frozen
    lora: LoraConfig = field(default_factory=LoraConfig)  # lora: low-rank updates beside frozen linears
    adapter: AdapterConfig = field(default_factory=AdapterConfig)  # adapter: Houlsby bottlenecks
    prompt: PromptConfig = field(default_factory=PromptConfig)  # prompt: a soft prompt of input embeddings
    prefix: PromptConfig = field(default_factory=PromptConfig)  # prefix: trainable keys / values per layer

    def settings(self) -> Any:
        """The settings section of the chosen strategy (None for those without settings)."""
        section = getattr(self, self.name, None)
        return section if dataclasses.is_dataclass(section) else None

# the flat keys of earlier versions, still read: old key -> new keys
LEGACY_STRATEGY_KEYS = {"freeze_layers": ("freeze.layers",), "lora_rank": ("lora.rank",),
                        "lora_alpha": ("lora.alpha",), "lora_dropout": ("lora.dropout",),
                        "lora_targets": ("lora.targets",), "adapter_size": ("adapter.size",),
                        "prompt_length": ("prompt.length", "prefix.length")}


def upgrade_strategy_keys(section: dict[str, Any], where: str = "strategy") -> dict[str, Any]:
    """A `strategy` mapping with the flat keys of earlier versions (lora_rank, prompt_length...)
    moved into their sections, with a warning naming the new key."""
    out = dict(section)
    for old, news in LEGACY_STRATEGY_KEYS.items():
        if old in out:
            value = out.pop(old)
            for new in news:
                sec, key = new.split(".")
                out.setdefault(sec, {})
                if isinstance(out[sec], dict):
                    out[sec].setdefault(key, value)
            log.warning("%s.%s is now %s", where, old, " and ".join(f"strategy.{n}" for n in news))
    return out


@dataclass
class FinetuneTaskConfig:
    # a name in zerolm.tasks' registry (classify: sentence (pair) classification, tag: token
    # tagging, clm: prompt -> completion, intent_slots: joint intent detection and slot
    # filling), checked before a run starts
    name: str = "classify"
    class_weights: list[float] = field(default_factory=list)  # classify: per label (sorted names); empty: none
    head_dropout: float = 0.1  # classify / tag / intent_slots: dropout before the linear head(s)
    pooling: Literal["first", "mean"] = "first"  # classify / intent_slots (intent): BERT pooled [CLS] / GPT last token, or the mean over tokens
    crf: bool = False  # tag / intent_slots: a linear-chain CRF on top (forward-algorithm loss, Viterbi decoding)
    intent_weight: float = 1.0  # intent_slots: weight of the intent cross-entropy in the joint loss
    slot_weight: float = 1.0  # intent_slots: weight of the slot loss (per word; the CRF's NLL with task.crf)
    label_smoothing: float = 0.0  # seq2seq: share of the target probability spread over the vocabulary
    # seq2seq: how dev targets are generated for BLEU / ROUGE (and the default of predict)
    num_beams: int = 1  # seq2seq: beam search with this many beams (1: greedy)
    length_penalty: float = 1.0  # seq2seq: beam scores are log p / length ** this
    no_repeat_ngram_size: int = 0  # seq2seq: never repeat an n-gram of this size (0: off)
    max_new_tokens: int = 0  # seq2seq: longest generated target; 0: data.max_target_length
    eval_generate: int = -1  # seq2seq: dev examples generated at each evaluation (-1: all, 0: none: loss only)
    # classify, out-of-scope detection (zerolm.eval.oos): the label out-of-scope queries carry
    # in the data and in predictions (CLINC150: oos); in the training data it is a class
    oos_label: str | None = None
    oos_score: Literal["msp", "energy"] = "msp"  # classify: 1 - max in-scope probability, or energy
    # classify: out of scope when the score is above this number; auto: calibrated on dev
    # (see oos_in_scope_recall); null: the oos class alone decides
    oos_threshold: float | str | None = None
    # classify, oos_threshold auto: null maximises in-scope accuracy + oos recall on dev; a
    # share (e.g. 0.95) takes the lowest threshold keeping that share of in-scope dev queries
    oos_in_scope_recall: float | None = None


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
    # max_steps 0: not set, train.epochs give the length (see TrainConfig.max_steps)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        max_steps=0, batch_size=32, eval_every=0, save_every=0,
        # a finished fine-tune keeps best/ only (its checkpoints and final/ are GBs on big models)
        keep_final=False, keep_checkpoints_when_done=False,
        early_stopping=EarlyStoppingConfig("val_accuracy", "max", 0)))

    def validate(self) -> FinetuneConfig:
        if not self.data.train or not self.data.dev:
            raise ConfigError("data.train and data.dev: give the labelled training and validation files")
        if self.init is None and not self.tokenizer.files and not self.tokenizer.path:
            raise ConfigError("from scratch (init: null) needs tokenizer.path or tokenizer.files")
        if self.reinit and not self.init:
            raise ConfigError("reinit: true needs init: the model whose architecture and tokenizer to take")
        t, s = self.task, self.strategy
        if t.crf and t.name not in ("tag", "intent_slots"):
            raise ConfigError(f"task.crf needs task.name 'tag' or 'intent_slots', got {t.name!r}")
        _check_joint_task(t, self.train.early_stopping)
        if t.class_weights and t.name != "classify":
            raise ConfigError(f"task.class_weights needs task.name 'classify', got {t.name!r}")
        _check_oos(t)
        _check_seq2seq(t, self.data, self.train.early_stopping)
        if self.init is None and t.name == "seq2seq" and self.model.family != "t5":
            raise ConfigError("task.name 'seq2seq' needs an encoder-decoder (model.family: t5)")
        if self.init is None and t.name == "clm" and self.model.family != "gpt":
            raise ConfigError("task.name 'clm' needs a gpt model (model.family: gpt)")
        if not 0 <= t.head_dropout < 1:
            raise ConfigError(f"task.head_dropout must be in [0, 1), got {t.head_dropout}")
        if self.data.max_length < 2:
            raise ConfigError(f"data.max_length must be >= 2 tokens, got {self.data.max_length}")
        _check_strategy(s)
        tr = self.train
        if tr.max_steps < 0 or tr.epochs < 0 or not math.isfinite(tr.epochs):
            raise ConfigError(f"train.max_steps and train.epochs must be >= 0, got "
                              f"max_steps={tr.max_steps}, epochs={tr.epochs:g}")
        if tr.max_steps == 0 and tr.epochs == 0:
            raise ConfigError("a fine-tuning run needs a length: set train.epochs (passes "
                              "over the training data, e.g. train.epochs=3) or train.max_steps "
                              "(optimizer steps), or both (the smaller wins)")
        _check_optim_schedule(self.optim, self.schedule)
        _check_train(tr)
        _log_warnings(self)
        return self


# ---------------------------------------------------------------- value checks and the run length


def _check_optim_schedule(o: OptimConfig, s: ScheduleConfig) -> None:
    """One-line errors, naming the key, for values the optimizer would take and fail on later
    (or, worse, train with: a negative learning rate climbs the loss)."""
    if o.name not in ("adamw", "adafactor"):
        raise ConfigError(f"optim.name must be adamw or adafactor, got {o.name!r}")
    if not o.lr > 0 or not math.isfinite(o.lr):  # `not >` catches NaN too
        raise ConfigError(f"optim.lr must be a positive number, got {o.lr} (typical: 6e-4 to "
                          f"1e-3 for pretraining, 1e-5 to 1e-4 for full fine-tuning, 1e-4 to 1e-3 "
                          f"for LoRA)")
    if not o.weight_decay >= 0:
        raise ConfigError(f"optim.weight_decay must be >= 0, got {o.weight_decay} (0 disables it)")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {o.betas} (Adam's "
                          f"usual: [0.9, 0.999])")
    if not o.eps > 0:
        raise ConfigError(f"optim.eps must be > 0, got {o.eps} (usual: 1e-8)")
    if s.warmup_steps < 0:
        raise ConfigError(f"schedule.warmup_steps must be >= 0, got {s.warmup_steps}")
    if not s.min_lr >= 0:
        raise ConfigError(f"schedule.min_lr must be >= 0, got {s.min_lr}")
    if s.decay_steps is not None and s.decay_steps < 1:
        raise ConfigError(f"schedule.decay_steps must be >= 1 (or null: train.max_steps), got "
                          f"{s.decay_steps}")


def _check_train(tr: TrainConfig) -> None:
    for name in ("batch_size", "grad_accum", "keep_checkpoints"):
        if getattr(tr, name) < 1:
            raise ConfigError(f"train.{name} must be >= 1, got {getattr(tr, name)}")
    for name in ("log_every", "eval_every", "eval_batches", "save_every", "threads"):
        if getattr(tr, name) < 0:
            raise ConfigError(f"train.{name} must be >= 0, got {getattr(tr, name)}")
    if not tr.clip_grad >= 0:
        raise ConfigError(f"train.clip_grad must be >= 0 (0 disables clipping), got {tr.clip_grad}")
    if tr.early_stopping.patience < 0:
        raise ConfigError(f"train.early_stopping.patience must be >= 0 (0 disables it), got "
                          f"{tr.early_stopping.patience}")


def _check_oos(t: FinetuneTaskConfig) -> None:
    """Out-of-scope settings: classification only, a label to name out-of-scope queries,
    and a threshold that is a number or auto. (Whether oos_label is a class of the training
    data is checked when the data is read.)"""
    set_keys = [k for k, default in (("oos_label", None), ("oos_score", "msp"), ("oos_threshold", None),
                                     ("oos_in_scope_recall", None)) if getattr(t, k) != default]
    if set_keys and t.name != "classify":
        raise ConfigError(f"task.{set_keys[0]}: out-of-scope detection is for task.name 'classify', "
                          f"got {t.name!r}; remove the task.oos_* keys")
    if t.oos_threshold is not None and t.oos_label is None:
        raise ConfigError("task.oos_threshold needs task.oos_label: the label out-of-scope queries carry "
                          "in the data and in predictions (e.g. task.oos_label=oos)")
    th = t.oos_threshold
    if isinstance(th, str) and th != "auto":
        raise ConfigError(f"task.oos_threshold must be a number, auto (calibrated on dev) or null, got {th!r}")
    if isinstance(th, float) and not math.isfinite(th):
        raise ConfigError(f"task.oos_threshold must be a finite number, got {th}")
    r = t.oos_in_scope_recall
    if r is not None:
        if th != "auto":
            raise ConfigError(f"task.oos_in_scope_recall ({r:g}) calibrates the threshold: it needs "
                              f"task.oos_threshold=auto, got {th!r}")
        if not 0 < r <= 1:
            raise ConfigError(f"task.oos_in_scope_recall must be a share in (0, 1], e.g. 0.95, got {r:g}")


def _check_seq2seq(t: FinetuneTaskConfig, d: LabelledDataConfig, es: EarlyStoppingConfig) -> None:
    """The seq2seq decoding settings are in range (and set only for seq2seq), and the
    early-stopping metric is one its report has."""
    defaults = FinetuneTaskConfig()
    keys = ("label_smoothing", "num_beams", "length_penalty", "no_repeat_ngram_size", "max_new_tokens",
            "eval_generate")
    if t.name != "seq2seq":
        for k in keys:
            if getattr(t, k) != getattr(defaults, k):
                raise ConfigError(f"task.{k} needs task.name 'seq2seq', got {t.name!r}")
        return
    if not 0 <= t.label_smoothing < 1:
        raise ConfigError(f"task.label_smoothing must be in [0, 1), got {t.label_smoothing}")
    for k, low in (("num_beams", 1), ("no_repeat_ngram_size", 0), ("max_new_tokens", 0), ("eval_generate", -1)):
        v = getattr(t, k)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ConfigError(f"task.{k} must be an integer >= {low}, got {v!r}")
    if not math.isfinite(t.length_penalty):
        raise ConfigError(f"task.length_penalty must be a finite number, got {t.length_penalty}")
    if d.max_target_length < 2:
        raise ConfigError(f"data.max_target_length must be >= 2 tokens, got {d.max_target_length}")
    if es.metric in ("val_accuracy", "accuracy"):
        raise ConfigError(f"train.early_stopping.metric: the seq2seq report has no {es.metric!r}; use "
                          "val_bleu (mode: max) or val_loss (mode: min)")
    if es.metric in ("val_bleu", "bleu") and t.eval_generate == 0:
        raise ConfigError("train.early_stopping.metric val_bleu needs generated targets: task.eval_generate "
                          "must not be 0")


def _check_joint_task(t: FinetuneTaskConfig, es: EarlyStoppingConfig) -> None:
    """task.intent_weight / task.slot_weight: intent_slots only, >= 0, not both 0; and an
    early-stopping metric its report has (it has no plain `accuracy`)."""
    weights = {"intent_weight": t.intent_weight, "slot_weight": t.slot_weight}
    if t.name != "intent_slots":
        for k, v in weights.items():
            if v != 1.0:
                raise ConfigError(f"task.{k} needs task.name 'intent_slots', got {t.name!r}")
        return
    for k, v in weights.items():
        if not (v >= 0 and math.isfinite(v)):
            raise ConfigError(f"task.{k} must be a number >= 0, got {v}")
    if not (t.intent_weight or t.slot_weight):
        raise ConfigError("task.intent_weight and task.slot_weight are both 0: nothing would be learnt")
    if es.metric in ("val_accuracy", "accuracy"):
        raise ConfigError(f"train.early_stopping.metric: the intent_slots report has no {es.metric!r}; "
                          "use val_frame_accuracy (mode max, the headline), val_intent_accuracy, val_slot_f1 "
                          "or val_loss (mode min)")


def _check_strategy(s: StrategyConfig) -> None:
    if s.freeze.layers < 0:
        raise ConfigError(f"strategy.freeze.layers must be >= 0, got {s.freeze.layers}")
    if s.name == "lora":
        if s.lora.rank < 1:
            raise ConfigError(f"strategy.lora.rank must be >= 1, got {s.lora.rank}")
        if not s.lora.alpha > 0:
            raise ConfigError(f"strategy.lora.alpha must be > 0, got {s.lora.alpha}")
        if not 0 <= s.lora.dropout < 1:
            raise ConfigError(f"strategy.lora.dropout must be in [0, 1), got {s.lora.dropout}")
    if s.name == "adapter" and s.adapter.size < 1:
        raise ConfigError(f"strategy.adapter.size must be >= 1, got {s.adapter.size}")
    if s.name in ("prompt", "prefix") and s.settings().length < 1:
        raise ConfigError(f"strategy.{s.name}.length must be >= 1 for {s.name} tuning, got "
                          f"{s.settings().length}")


def warmup_warning(warmup_steps: int, total_steps: int,
                   total_key: str = "train.max_steps") -> str | None:
    """The warning for a warmup longer than the run (None when it fits): the learning rate
    then never reaches optim.lr, which usually reads as "this model does not learn"."""
    if total_steps < 1 or warmup_steps <= total_steps:
        return None
    return (f"schedule.warmup_steps={warmup_steps} exceeds {total_key}={total_steps}: the learning "
            f"rate only climbs to {total_steps / warmup_steps:.0%} of optim.lr and never decays; "
            f"lower schedule.warmup_steps (a tenth of the run, {total_steps // 10}, is common)")


def config_warnings(cfg: RunConfig | FinetuneConfig) -> list[str]:
    """Things a valid config probably does not mean (validation logs them as warnings)."""
    out = []
    steps = cfg.train.max_steps  # fine-tuning: only when set; the epochs' length needs the data
    if msg := warmup_warning(cfg.schedule.warmup_steps, steps):
        out.append(msg)
    if cfg.schedule.min_lr > cfg.optim.lr:
        out.append(f"schedule.min_lr={cfg.schedule.min_lr:g} is above optim.lr={cfg.optim.lr:g}: "
                   f"the learning rate rises after warmup instead of decaying; lower "
                   f"schedule.min_lr")
    o, adam = cfg.optim, OptimConfig()
    ignored = [k for k, v, d in (("betas", list(o.betas), adam.betas), ("eps", o.eps, adam.eps)) if v != d]
    if o.name == "adafactor" and ignored:
        out.append(f"optim.{' and optim.'.join(ignored)} are AdamW's settings; adafactor ignores them (it "
                   f"keeps torch's own: second-moment decay 1 - t^-0.8, eps 1e-3 relative to the weight's RMS)")
    return out


def _log_warnings(cfg: RunConfig | FinetuneConfig) -> None:
    for msg in config_warnings(cfg):
        log.warning("%s", msg)


def resolve_finetune_steps(train_cfg: TrainConfig, steps_per_epoch: int) -> tuple[int, str]:
    """The optimizer steps a fine-tuning run takes, and a one-line explanation for the log.

    train.epochs > 0 gives ceil(epochs x steps_per_epoch) steps; train.max_steps > 0 gives
    that many; when both are set the smaller wins (max_steps caps the epochs). A config
    with neither is refused by FinetuneConfig.validate, and here too.
    """
    tr = train_cfg
    if steps_per_epoch < 1:
        raise ConfigError(f"the training data gives {steps_per_epoch} optimizer steps per epoch; "
                          f"it needs at least one (lower train.batch_size or train.grad_accum)")
    by_epochs = max(math.ceil(tr.epochs * steps_per_epoch), 1) if tr.epochs > 0 else 0
    ep = f"train.epochs={tr.epochs:g} ({by_epochs:,} steps at {steps_per_epoch:,} per epoch)"
    cap = f"train.max_steps={tr.max_steps:,}"
    if by_epochs and tr.max_steps > 0:
        if tr.max_steps < by_epochs:
            return tr.max_steps, f"{cap} caps {ep}: {tr.max_steps:,} steps"
        return by_epochs, f"{ep} end before {cap}: {by_epochs:,} steps"
    if by_epochs:
        return by_epochs, f"{ep}: {by_epochs:,} steps"
    if tr.max_steps > 0:
        return tr.max_steps, f"{cap} (train.epochs not set): {tr.max_steps:,} steps"
    raise ConfigError("a fine-tuning run needs a length: set train.epochs or train.max_steps (or "
                      "both: the smaller wins)")


def describe_finetune_length(train_cfg: TrainConfig) -> str:
    """Which of train.epochs / train.max_steps sets a fine-tuning run's length, said
    without reading the data (`zerolm config show` prints it)."""
    tr = train_cfg
    if tr.epochs > 0 and tr.max_steps > 0:
        return (f"train.epochs={tr.epochs:g} sets the length; train.max_steps={tr.max_steps} caps "
                f"it (the smaller wins)")
    if tr.epochs > 0:
        return f"train.epochs={tr.epochs:g} sets the length (train.max_steps=0: no cap)"
    if tr.max_steps > 0:
        return f"train.max_steps={tr.max_steps} sets the length (train.epochs=0: not set)"
    return "no length: set train.epochs or train.max_steps"


def check_writable_dir(path: str | os.PathLike, key: str = "out_dir") -> Path:
    """Create directory `path` (and its parents) if needed and make sure files can be
    written in it; otherwise a one-line ConfigError naming `key` and the path. Call it
    before hours of work whose results would go there."""
    p = Path(path).expanduser()
    hint = f"choose another {key} (e.g. {key}=runs/NAME)"
    for anc in [p, *p.parents]:  # a file where a directory must be: say which
        if anc.exists() and not anc.is_dir():
            if anc == p:
                raise ConfigError(f"{key}: {p} is a file, not a directory; {hint}")
            raise ConfigError(f"{key}: cannot create {p}: {anc} is a file, not a directory; {hint}")
        if anc.exists():
            break
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as e:
        raise ConfigError(f"{key}: cannot write to {p} ({e.strerror or e}); {hint}") from None
    return p


@dataclass
class StudentConfig:
    n_layers: int = 0  # blocks of the student; 0: the teacher's
    d_model: int = 0  # width; 0: the teacher's (a narrower student cannot copy teacher weights)
    n_heads: int = 0  # attention heads; 0: the teacher's (attention / minilm losses need the same,
    # unless distill.relation_heads is set)
    d_ff: int = 0  # feed-forward width; 0: the teacher's
    n_decoder_layers: int = 0  # an encoder-decoder (t5): decoder blocks; 0: as many as the student's encoder
    # teacher_layers | bottom | teacher_embeddings (projected to a narrower width; blocks random)
    # | random | a model directory to start from
    init: str = "teacher_layers"
    layers: list[int] = field(default_factory=list)  # teacher_layers: which teacher blocks (default evenly spaced)


@dataclass
class DistillLossConfig:
    hard: float = 1.0  # weight of the task's loss on the labels
    soft: float = 1.0  # weight of the teacher's outputs as soft targets
    temperature: float = 2.0  # softens both distributions; the soft loss is scaled by T^2
    divergence: Literal["kl", "reverse_kl", "js"] = "kl"  # soft-target divergence
    embedding: float = 0.0  # weight of TinyBERT's embedding-output MSE
    hidden: float = 0.0  # weight of TinyBERT's hidden-state MSE (projected when widths differ)
    attention: float = 0.0  # weight of TinyBERT's attention-map MSE
    minilm: float = 0.0  # weight of MiniLM's last-layer attention + value-relation KL
    # minilm with relation_heads > 0: MiniLMv2's query, key and value relations split into this
    # many relation heads, which frees the student's head count (it must divide both widths)
    relation_heads: int = 0
    layer_map: str | list[int] = "uniform"  # teacher layer of each student layer: uniform, last, or a list
    latency_repeats: int = 10  # forward passes timed per model for the report (median)


LOSS_WEIGHTS = ("hard", "soft", "embedding", "hidden", "attention", "minilm")
INTERMEDIATE_LOSSES = ("embedding", "hidden", "attention", "minilm")  # need no labels nor task head


def _check_losses(d: DistillLossConfig, key: str) -> None:
    for k in LOSS_WEIGHTS:
        if getattr(d, k) < 0:
            raise ConfigError(f"{key}.{k} must be >= 0, got {getattr(d, k)}")
    if not any(getattr(d, k) for k in LOSS_WEIGHTS):
        raise ConfigError(f"{key}: every loss weight is 0; give at least one (e.g. {key}.soft=1)")
    if not d.temperature > 0:
        raise ConfigError(f"{key}.temperature must be > 0, got {d.temperature}")
    if d.relation_heads < 0:
        raise ConfigError(f"{key}.relation_heads must be >= 0, got {d.relation_heads}")


@dataclass
class GeneralDistillConfig:
    """TinyBERT's first stage: the student learns the teacher's hidden states and attention
    on unlabelled text (intermediate losses only), before task distillation. Runs when
    data.train is set, in OUT_DIR/general; the task stage then starts from its student."""

    teacher: str = ""  # a pretrained model (zerolm, HF directory, python:PKG); "": the task teacher's body
    data: DataConfig = field(default_factory=DataConfig)  # text files; block_size = tokens per input
    distill: DistillLossConfig = field(default_factory=lambda: DistillLossConfig(
        hard=0.0, soft=0.0, embedding=1.0, hidden=1.0, attention=1.0))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="linear", warmup_steps=0))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        max_steps=0, batch_size=32, eval_every=0, save_every=500, keep_final=False,
        keep_checkpoints_when_done=False, early_stopping=EarlyStoppingConfig("val_loss", "min", 0)))

    @property
    def enabled(self) -> bool:
        return bool(self.data.train)

    def validate(self) -> None:
        d = self.distill
        _check_losses(d, "general.distill")
        labelled = [k for k in ("hard", "soft") if getattr(d, k)]
        if labelled:
            raise ConfigError(f"general.distill.{labelled[0]}={getattr(d, labelled[0])}: general distillation "
                              f"reads unlabelled text and learns only the intermediate losses "
                              f"({', '.join(INTERMEDIATE_LOSSES)}); set general.distill.hard=0 and "
                              f"general.distill.soft=0")
        if self.train.max_steps <= 0:
            raise ConfigError("general.train.max_steps: general distillation on text needs a number of steps")
        if self.data.block_size < 3:
            raise ConfigError(f"general.data.block_size must be >= 3 tokens, got {self.data.block_size}")
        if not 0 < self.data.val_fraction < 1 and not self.data.val:
            raise ConfigError(f"general.data.val_fraction must be in (0, 1), got {self.data.val_fraction}")
        _check_optim_schedule(self.optim, self.schedule)
        _check_train(self.train)


@dataclass
class DistillConfig:
    out_dir: str = "runs/distill"  # where the student, metrics and reports go
    teacher: str = ""  # a fine-tuned run (or its best/), a zerolm or Hugging Face causal LM: what zerolm.load takes
    student: StudentConfig = field(default_factory=StudentConfig)
    # optional first stage on unlabelled text (general.data.train set); the task stage below
    # then starts from its student
    general: GeneralDistillConfig = field(default_factory=GeneralDistillConfig)
    distill: DistillLossConfig = field(default_factory=DistillLossConfig)
    # also train the same student on the labels alone (same initialisation, steps and
    # optimiser) into OUT_DIR/kd_baseline, so the report shows what distillation added
    kd_baseline: bool = False
    # labelled files in the teacher's training format (a causal-LM teacher: text files);
    # data.max_length: tokens per input (causal LM: per training window). Empty with a
    # general stage: the run is general distillation only.
    data: LabelledDataConfig = field(default_factory=LabelledDataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="linear", warmup_steps=0))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        max_steps=0, batch_size=32, eval_every=0, save_every=0, keep_final=False,
        keep_checkpoints_when_done=False, early_stopping=EarlyStoppingConfig("val_loss", "min", 0)))

    @property
    def has_task_stage(self) -> bool:
        return bool(self.data.train or self.data.dev)

    def validate(self) -> DistillConfig:
        if not self.teacher:
            raise ConfigError("teacher: give the model to distil (a fine-tuned run, or a causal LM)")
        if self.general.enabled:
            self.general.validate()
        if not self.has_task_stage:
            if not self.general.enabled:
                raise ConfigError("data.train and data.dev: give the training and validation files (or "
                                  "general.data.train for general distillation on text alone)")
            if self.kd_baseline:
                raise ConfigError("kd_baseline compares task distillation with training on the labels: "
                                  "it needs data.train and data.dev")
            return self
        if not self.data.train or not self.data.dev:
            raise ConfigError("data.train and data.dev: give the training and validation files")
        _check_losses(self.distill, "distill")
        if self.train.epochs <= 0 and self.train.max_steps <= 0:
            raise ConfigError("a distillation run needs a length: set train.epochs or train.max_steps")
        if self.data.max_length < 2:
            raise ConfigError(f"data.max_length must be >= 2 tokens, got {self.data.max_length}")
        _check_optim_schedule(self.optim, self.schedule)
        _check_train(self.train)
        return self


# ---------------------------------------------------------------- loading, validation


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check (and gently coerce: int -> float, str -> list) `value` against type hint `tp`."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build_section(tp, value, key + ".")
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


def _section_default(cls: type, name: str, base: Any) -> Any:
    """The value a section takes when the file leaves all its keys out: the enclosing
    default's (FinetuneConfig's train section has max_steps 0, lr 5e-5, ...), not the bare
    section class's."""
    if base is not None:
        return getattr(base, name)
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def build_section(cls: type, data: dict[str, Any], prefix: str = "", base: Any = None) -> Any:
    """`cls` from a mapping; keys the mapping leaves out keep their defaults (those of
    `base` when given), section by section, so a file that sets one key of a section
    keeps the other defaults of that section."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in data.items():
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{prefix}{k}'{hint}")
        tp = hints[k]
        if dataclasses.is_dataclass(tp) and isinstance(v, dict):
            kwargs[k] = build_section(tp, v, prefix + k + ".", _section_default(cls, k, base))
        else:
            kwargs[k] = _convert(v, tp, prefix + k)
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
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

    `cls` None picks by content: a config with `teacher` is a DistillConfig, one with
    `init` (a fine-tuning recipe) a FinetuneConfig, anything else a pretraining RunConfig."""
    tree: dict[str, Any] = _read_tree(Path(path)) if path is not None else {}
    if cls is None:
        cls = DistillConfig if "teacher" in tree else FinetuneConfig if "init" in tree else RunConfig
    if isinstance(tree.get("strategy"), dict):
        tree["strategy"] = upgrade_strategy_keys(tree["strategy"])
    for key, value in parse_overrides(overrides or []):
        head, _, last = key.rpartition(".")
        if head == "strategy" and last in LEGACY_STRATEGY_KEYS:
            log.warning("override %s is now %s", key, " and ".join(f"strategy.{n}" for n in
                                                                     LEGACY_STRATEGY_KEYS[last]))
            for new in LEGACY_STRATEGY_KEYS[last]:
                _set_dotted(tree, f"strategy.{new}", value, cls)
            continue
        _set_dotted(tree, key, value, cls)
    try:
        cfg = build_section(cls, tree)
        return cfg.validate() if hasattr(cfg, "validate") else cfg
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
