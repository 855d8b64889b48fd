"""Frictions users ran into (issues 11 and 17): --resume eating overrides, the fine-tuning
run length, bad optimiser values, help texts, byte-level token display, the comparison
chart and folder, BOMs, empty texts and unwritable output directories."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from zerolm.cli.main import VERBS, build_parser, main, parse_args, resume_arg
from zerolm.config import (
    DistillConfig,
    FinetuneConfig,
    TrainConfig,
    check_writable_dir,
    load_config,
    resolve_finetune_steps,
)
from zerolm.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
GPT_CHAR = str(REPO / "configs/tiny/gpt_char.yaml")
CLASSIFY = str(REPO / "configs/tiny/classify_reviews.yaml")

# verbs whose option help strings are still being written in modules owned elsewhere;
# the help test covers every other verb, and each of these once it leaves the set
GENERATE_PENDING: set[str] = set()
OTHER_VERBS_PENDING: set[str] = set()


# ------------------------------------------------------------------ 1. --resume


@pytest.mark.parametrize("verb", ["pretrain", "finetune"])
def test_resume_is_a_flag_that_leaves_the_override_alone(verb):
    args = parse_args([verb, GPT_CHAR, "--resume", "train.max_steps=150"])
    assert args.resume is True and resume_arg(args) is True
    assert args.overrides == ["train.max_steps=150"] and not args.overwrite


@pytest.mark.parametrize("verb", ["pretrain", "finetune"])
def test_resume_from_names_a_checkpoint_and_overwrite_excludes_resuming(verb, capsys):
    args = parse_args([verb, GPT_CHAR, "--resume-from", "runs/x/checkpoints/step-00000010",
                       "train.max_steps=150"])
    assert resume_arg(args) == "runs/x/checkpoints/step-00000010"
    assert args.overrides == ["train.max_steps=150"]
    assert resume_arg(parse_args([verb, GPT_CHAR])) is False
    for flag in (["--resume"], ["--resume-from", "ck"]):
        with pytest.raises(SystemExit) as e:
            parse_args([verb, GPT_CHAR, *flag, "--overwrite"])
        assert e.value.code == 2
        assert "not allowed with argument" in capsys.readouterr().err


def test_pretrain_cli_passes_resume_and_overwrite(monkeypatch, tmp_path, capsys):
    import zerolm.train.pretrain as pretrain_mod

    calls = []

    def fake_pretrain(cfg, **kw):
        calls.append((cfg, kw))
        return SimpleNamespace(step=3, wall_s=0.1, tokens=10, stopped_early=False, final_eval={"loss": 2.5},
                               out_dir=Path(cfg.out_dir), interrupted=len(calls) == 3, train_s=0.1,
                               fit_train_s=0.1)

    monkeypatch.setattr(pretrain_mod, "pretrain", fake_pretrain)
    assert main(["pretrain", GPT_CHAR, "--overwrite", f"out_dir={tmp_path}",
                 "train.max_steps=3"]) == 0
    assert main(["pretrain", GPT_CHAR, "--resume", "train.max_steps=150"]) == 0
    (cfg1, kw1), (cfg2, kw2) = calls
    assert kw1 == {"resume": False, "overwrite": True, "init": None} and cfg1.train.max_steps == 3
    assert kw2 == {"resume": True, "overwrite": False, "init": None} and cfg2.train.max_steps == 150
    # an interrupted run says so, and does not pass its last validation off as final
    capsys.readouterr()
    assert main(["pretrain", GPT_CHAR, "--resume", "train.max_steps=150"]) == 0
    out = capsys.readouterr().out
    assert "interrupted at step 3 of 150" in out and "--resume" in out and "not a final result" in out


def test_finetune_cli_passes_resume_and_overwrite(monkeypatch, capsys):
    import zerolm.tasks
    import zerolm.train.finetune as finetune_mod

    calls = []

    def fake_finetune(cfg, **kw):
        calls.append((cfg, kw))
        report = {"strategy": {"strategy": "full", "trainable": 1, "total": 1, "percent": 100.0},
                  "samples_per_s": 1.0}
        return SimpleNamespace(step=1, wall_s=0.1, out_dir=Path(cfg.out_dir), interrupted=False), report

    monkeypatch.setattr(finetune_mod, "finetune", fake_finetune)
    class FakeTask:
        @staticmethod
        def format_report(report):
            return "the report"

    monkeypatch.setattr(zerolm.tasks, "finetune_task", lambda name: FakeTask)
    assert main(["finetune", CLASSIFY, "--resume-from", "ck", "train.max_steps=7"]) == 0
    cfg, kw = calls[0]
    assert kw == {"resume": "ck", "overwrite": False} and cfg.train.max_steps == 7
    out = capsys.readouterr().out
    assert "1 of 1 parameters trained (100%)" in out and "the report" in out


# ------------------------------------------------------------ 2. fine-tuning length


def test_max_steps_caps_epochs_and_the_smaller_wins():
    steps, why = resolve_finetune_steps(TrainConfig(max_steps=150, epochs=3), 2105)
    assert steps == 150
    assert why == ("train.max_steps=150 caps train.epochs=3 (6,315 steps at 2,105 per epoch): "
                   "150 steps")
    steps, why = resolve_finetune_steps(TrainConfig(max_steps=10_000, epochs=3), 2105)
    assert steps == 6315 and "before train.max_steps=10,000" in why
    assert resolve_finetune_steps(TrainConfig(max_steps=0, epochs=0.5), 7)[0] == 4  # ceil(3.5)
    assert resolve_finetune_steps(TrainConfig(max_steps=40, epochs=0), 7) == (
        40, "train.max_steps=40 (train.epochs not set): 40 steps")
    with pytest.raises(ConfigError, match="train.epochs or train.max_steps"):
        resolve_finetune_steps(TrainConfig(max_steps=0, epochs=0), 7)


def test_finetune_max_steps_defaults_to_unset_and_a_length_is_required():
    cfg = load_config(CLASSIFY)
    assert cfg.train.max_steps == 0 and cfg.train.epochs == 2  # the file sets train.* but max_steps
    assert load_config(CLASSIFY, ["train.epochs=0", "train.max_steps=5"]).train.max_steps == 5
    with pytest.raises(ConfigError, match=r"train\.epochs.*train\.max_steps"):
        load_config(CLASSIFY, ["train.epochs=0"])


def test_pretraining_still_needs_max_steps_and_takes_no_epochs():
    with pytest.raises(ConfigError, match="train.max_steps must be >= 1"):
        load_config(GPT_CHAR, ["train.max_steps=0"])
    with pytest.raises(ConfigError, match="train.epochs .* is for fine-tuning"):
        load_config(GPT_CHAR, ["train.epochs=1"])


def test_every_shipped_finetune_config_is_sized_by_its_epochs():
    # before the cap rule, train.max_steps beside train.epochs was ignored; no shipped
    # recipe sets it, so each still runs exactly its epochs
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        cfg = load_config(path)
        if isinstance(cfg, (FinetuneConfig, DistillConfig)):  # both sized like fine-tuning
            assert cfg.train.max_steps == 0 and cfg.train.epochs > 0, path
            assert resolve_finetune_steps(cfg.train, 100)[0] == round(cfg.train.epochs * 100), path
        else:
            assert cfg.train.max_steps >= 1 and cfg.train.epochs == 0, path


def test_a_section_keeps_the_finetuning_defaults_it_does_not_set(tmp_path):
    p = tmp_path / "ft.yaml"
    p.write_text("init: some/model\ndata: {train: a.tsv, dev: b.tsv}\noptim: {weight_decay: 0.0}\n"
                 "train: {epochs: 1}\nschedule: {warmup_steps: 10}\n")
    cfg = load_config(p)
    # FinetuneConfig's section defaults, not those of the bare OptimConfig / ScheduleConfig
    assert cfg.optim.lr == 5e-5 and cfg.schedule.name == "linear"
    assert cfg.train.early_stopping.metric == "val_accuracy" and cfg.train.max_steps == 0


def test_config_show_says_which_setting_sets_the_length(capsys):
    assert main(["config", "show", CLASSIFY, "train.max_steps=40"]) == 0
    last = capsys.readouterr().out.rstrip("\n").splitlines()[-1]
    assert last == "# train.epochs=2 sets the length; train.max_steps=40 caps it (the smaller wins)"
    assert main(["config", "show", CLASSIFY]) == 0
    assert capsys.readouterr().out.rstrip("\n").splitlines()[-1].startswith("# train.epochs=2 sets")
    assert main(["config", "show", GPT_CHAR]) == 0
    assert "sets the length" not in capsys.readouterr().out  # pretraining: max_steps, always


# ------------------------------------------------------------ 3. values and warnings


def test_warmup_longer_than_the_run_is_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="zerolm.config"):
        load_config(GPT_CHAR, ["schedule.warmup_steps=50"])
    assert "schedule.warmup_steps=50 exceeds train.max_steps=20" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="zerolm.config"):
        load_config(CLASSIFY, ["schedule.warmup_steps=50"])  # epochs alone: the data sets the length
        assert not caplog.records
        load_config(CLASSIFY, ["schedule.warmup_steps=50", "train.max_steps=10"])
    assert "schedule.warmup_steps=50 exceeds train.max_steps=10" in caplog.text


def test_adams_settings_under_adafactor_are_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="zerolm.config"):
        load_config(GPT_CHAR, ["optim.name=adafactor", "optim.lr=1e-2"])
        assert not caplog.records  # the defaults say nothing
        load_config(GPT_CHAR, ["optim.name=adafactor", "optim.betas=[0.9,0.98]", "optim.eps=1e-6"])
    assert "optim.betas and optim.eps are AdamW's settings; adafactor ignores them" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="zerolm.config"):
        load_config(GPT_CHAR, ["optim.betas=[0.9,0.98]", "optim.eps=1e-6"])  # AdamW uses them
    assert not caplog.records


@pytest.mark.parametrize("override,key", [
    ("optim.lr=-1e-3", "optim.lr"), ("optim.lr=0", "optim.lr"), ("optim.lr=.nan", "optim.lr"),
    ("optim.weight_decay=-0.1", "optim.weight_decay"), ("optim.betas=[0.9, 1.0]", "optim.betas"),
    ("optim.betas=[0.9]", "optim.betas"), ("optim.eps=0", "optim.eps"),
    ("train.clip_grad=-1", "train.clip_grad"), ("train.batch_size=0", "train.batch_size"),
    ("train.grad_accum=0", "train.grad_accum"),
    ("schedule.warmup_steps=-5", "schedule.warmup_steps"),
    ("schedule.min_lr=-1e-4", "schedule.min_lr"), ("train.eval_every=-1", "train.eval_every"),
])
@pytest.mark.parametrize("config", [GPT_CHAR, CLASSIFY])
def test_a_bad_value_is_an_error_naming_its_key(override, key, config):
    with pytest.raises(ConfigError, match=re.escape(key) + " must be"):
        load_config(config, [override])


def test_a_negative_learning_rate_is_one_line_from_the_cli(capsys):
    assert main(["pretrain", GPT_CHAR, "optim.lr=-1e-3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zerolm pretrain: error: ")
    assert "optim.lr must be a positive number" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_finetune_strategy_values_are_checked():
    with pytest.raises(ConfigError, match="strategy.lora.rank must be >= 1"):
        load_config(CLASSIFY, ["strategy.name=lora", "strategy.lora.rank=0"])
    with pytest.raises(ConfigError, match=r"strategy.lora.dropout must be in \[0, 1\)"):
        load_config(CLASSIFY, ["strategy.name=lora", "strategy.lora.dropout=1.5"])
    # the flat keys of earlier versions still work, and say what they are now
    cfg = load_config(CLASSIFY, ["strategy.name=lora", "strategy.lora_rank=4", "strategy.prompt_length=7"])
    assert cfg.strategy.lora.rank == 4 and cfg.strategy.prompt.length == cfg.strategy.prefix.length == 7


# ------------------------------------------------------------------ 4. help texts


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_config_path_in_the_help_exists():
    mentioned = set()
    for _, parser in _parsers(build_parser()):
        mentioned |= set(re.findall(r"configs/[\w./-]+?\.yaml", parser.format_help()))
    assert "configs/tiny/gpt_char.yaml" in mentioned  # the search finds what it should
    missing = sorted(m for m in mentioned if not (REPO / m).is_file())
    assert not missing, f"help texts cite configs that do not exist: {missing}"


def test_every_option_of_every_verb_has_help():
    pending = GENERATE_PENDING | OTHER_VERBS_PENDING
    checked, missing = set(), []
    for path, parser in _parsers(build_parser()):
        if not path or path[0] in pending:
            continue
        checked.add(path[0])
        for a in parser._actions:
            if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not a.help or a.help == argparse.SUPPRESS:
                missing.append(f"zerolm {' '.join(path)} {'/'.join(a.option_strings) or a.dest}")
    assert checked == set(VERBS) - pending
    assert not missing, f"options without a help string: {missing}"


# ------------------------------------------------------- 5. byte-level BPE tokens


def test_tokenizer_encode_shows_readable_text_beside_byte_level_pieces(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("a gripping café\n" * 20 + "中文\n", encoding="utf-8")
    tok_dir = tmp_path / "bpe"
    assert main(["tokenizer", "train", "--kind", "bpe", "--files", str(corpus),
                 "--vocab-size", "300", "--out", str(tok_dir)]) == 0
    capsys.readouterr()
    assert main(["tokenizer", "encode", str(tok_dir), "--text", "a gripping café 中"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["id", "piece", "text"]
    rows = [ln.split(maxsplit=2) for ln in lines[1:] if ln.split()[0].isdigit()]
    table = {piece: text for _, piece, text in rows}
    assert table["Ġgripping"] == '" gripping"' and table["ĠcafÃ©"] == '" café"'
    # 中 occurs once: its three bytes stay separate pieces, each shown as a byte
    zhong = [text for text in table.values() if text.startswith('"<0x')]
    assert zhong == ['"<0xE4>"', '"<0xB8>"', '"<0xAD>"']
    assert any("bytes of a character" in ln for ln in lines)


# ------------------------------------------------------------------ 6. compare


def test_percentages_read_as_people_write_them():
    from zerolm.eval.plots import format_percent

    assert [format_percent(p) for p in (100.0, 12.34, 0.6, 0.0213, 0.02, 0.0)] == [
        "100%", "12.3%", "0.6%", "0.021%", "0.02%", "0%"]


def test_the_metric_axis_starts_at_zero():
    from zerolm.eval.plots import metric_axis_limits

    lo, hi = metric_axis_limits([0.51, 0.53, 0.55])
    assert lo == 0 and hi > 1  # an accuracy axis spans the whole scale
    lo, hi = metric_axis_limits([12.0, 30.0])  # perplexity
    assert lo == 0 and hi > 30


def _fake_result(run_dir: Path, strategy: str, accuracy: float, percent: float) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "eval.json").write_text(json.dumps({
        "metric": "accuracy", "accuracy": accuracy, "wall_s": 3.0, "samples_per_s": 10.0,
        "strategy": {"strategy": strategy, "trainable": 10, "total": 1000, "percent": percent}}))


def test_compare_out_dir_is_the_folder_itself(tmp_path, capsys):
    out = tmp_path / "cmp"
    _fake_result(out / "full", "full", 0.55, 100.0)  # finished runs are read back, not retrained
    _fake_result(out / "lora", "lora", 0.53, 0.6)
    assert main(["compare", CLASSIFY, "--strategies", "full,lora", "--out-dir", str(out)]) == 0
    assert (out / "compare.md").is_file() and (out / "compare.png").stat().st_size > 1000
    assert not (out / "compare").exists()
    printed = capsys.readouterr().out
    assert f"table: {out / 'compare.md'}" in printed
    assert "| full | 0.5500 | 10 | 100% |" in printed and "| lora | 0.5300 | 10 | 0.6% |" in printed


# ------------------------------------------------------------------ 7. loss unit


def test_loss_plot_names_the_unit_it_is_given(tmp_path, monkeypatch):
    import matplotlib.axes

    from zerolm.eval.plots import plot_loss_curve

    labels = []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_ylabel",
                        lambda self, text, **kw: labels.append(text))
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "loss": 0.7}\n{"step": 2, "loss": 0.6, "val_loss": 0.65}\n')
    plot_loss_curve(metrics, tmp_path / "a.png", loss_unit="nats / example")
    plot_loss_curve(metrics, tmp_path / "b.png")
    assert labels == ["loss (nats / example)", "loss (nats / token)"]
    assert (tmp_path / "a.png").stat().st_size > 1000


# -------------------------------------------------------- 9. unwritable out_dir


def test_an_out_dir_under_a_file_is_one_line_naming_the_path(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(ConfigError,
                       match=r"^out_dir: cannot create .*file\.txt/run: .*file\.txt is a file"):
        check_writable_dir(blocker / "run")
    with pytest.raises(ConfigError, match=r"^data\.cache_dir: .*file\.txt is a file"):
        check_writable_dir(blocker, key="data.cache_dir")
    assert check_writable_dir(tmp_path / "a" / "b").is_dir()  # created, parents included


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_out_dir_is_one_line_naming_the_path(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match=r"out_dir: cannot write to .*ro/run"):
            check_writable_dir(ro / "run")
    finally:
        ro.chmod(0o700)


def test_tokenizer_train_into_an_unwritable_place_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    code = main(["tokenizer", "train", "--kind", "char", "--files", "pkg:quickstart/corpus.txt",
                 "--out", str(blocker / "tok")])
    err = capsys.readouterr().err
    assert code == 2 and "--out: cannot create" in err and "Traceback" not in err
