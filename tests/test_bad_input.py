"""Bad input to every command (issue 15): empty sources, wrong types in records and configs,
paths of the wrong kind, settings that make a run meaningless, exceptions from the user's own
code, an output folder that cannot be written. Each ends with one line on stderr that names the
file, line, field or setting and the fix, exit status 2, no traceback, and nothing in the out
folder that a rerun would trust (a record, metrics, episodes, data or a model)."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import pytest

from rise_llm.cli import main
from rise_llm.records import Attempt, CollectedEpisode, CollectedTurn, TrainingExample, write_jsonl

TRUSTED = ("config.json", "metrics.json", "episodes.jsonl", "data.jsonl", "train.json")
TRUSTED += ("toy_model.json", "model.safetensors", "comparison.json")
"""What a rerun or a later stage reads back from an out folder."""

PROBLEMS = [{"id": "p1", "question": "What is 2 + 3?", "answer": "5"}]
VERIFIER = """
def boom(problem, response):
    return problem.meta["no such field"]


def says_yes(problem, response):
    return "yes"
"""


def _lines(path: Path, rows: list) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir) -> Path:
    """Files a new user might hand to the commands, right and wrong, in one folder."""
    d = tmp_path_factory.mktemp("inputs")
    _lines(d / "ok.jsonl", PROBLEMS)
    _lines(d / "empty.jsonl", [])
    (d / "blank.jsonl").write_text("\n  \n\n")
    _lines(d / "number_question.jsonl", [{"question": 12, "answer": "3"}])
    _lines(d / "list_question.jsonl", [{"question": ["2 + 3?"], "answer": "5"}])
    _lines(d / "blank_question.jsonl", [{"question": "  ", "answer": "5"}])
    _lines(d / "dict_answer.jsonl", [{"question": "2 + 3?", "answer": {"value": 5}}])
    _lines(d / "list_id.jsonl", [{"id": [1, 2], "question": "2 + 3?", "answer": "5"}])
    _lines(d / "no_question.jsonl", [{"prompt": "2 + 3?", "answer": "5"}])
    _lines(d / "torn.jsonl", [PROBLEMS[0], '{"question": "1 + 1?", "answer": '])
    _lines(d / "not_object.jsonl", ['["2 + 3?", "5"]'])
    _lines(d / "twice.jsonl", [PROBLEMS[0], PROBLEMS[0]])
    (d / "check.py").write_text(VERIFIER)
    (d / "syntax.py").write_text("def verify(problem, response:\n    return 1\n")
    (d / "a_file").write_text("not a folder\n")
    for folder in ("empty_folder", "config_folder", "empty_collection", "empty_data"):
        (d / folder).mkdir()
    (d / "empty_collection" / "episodes.jsonl").write_text("")
    (d / "empty_data" / "data.jsonl").write_text("")
    (d / "torn_collection").mkdir()
    (d / "torn_collection" / "episodes.jsonl").write_text('{"problem_id": "p1", "tur\n')
    (d / "data").mkdir()
    messages = [{"role": "user", "content": "2 + 3?"}, {"role": "assistant", "content": "5"}]
    write_jsonl(d / "data" / "data.jsonl", [TrainingExample(messages, 1, 12.18, 1, "p1")])
    (d / "collection").mkdir()
    turn = CollectedTurn(1, messages[:1], [Attempt("5", "5", 1)], 0, "policy")
    write_jsonl(d / "collection" / "episodes.jsonl", [CollectedEpisode("p1", [turn])])
    (d / "bad.yaml").write_text("base_model: m\nout: [\n")
    (d / "list.yaml").write_text("- base_model\n- out\n")
    run = f"base_model: {tiny_model_dir}\nout: {d / 'unused'}\n"
    yamls = {
        "unknown": "bogus: 1\n",
        "wrong_type": "iterations: two\n",
        "no_iterations": "iterations: 0\n",
        "window": "evaluate:\n  turns: 2\n  context_window: 3\n",
        "owned": "collect:\n  model: other\n",
        "train_lr": "train:\n  lr: 0\n",
        "samples": "collect:\n  samples: -1\n",
        "task_option": "task_options:\n  bogus: 1\n",
        "section": "collect: 3\n",
        "fine": "",
    }
    for name, text in yamls.items():
        (d / f"{name}.yaml").write_text(run + text)
    (d / "bad_model.yaml").write_text(f"base_model: {d / 'empty_folder'}\nout: {d / 'unused'}\n")
    return d


EVAL = ["evaluate", "--model", "{model}", "--limit", "1", "--turns", "1"]
JSONL = ["evaluate", "--model", "{model}", "--turns", "1", "--task", "jsonl", "--task-option"]
COLLECT = ["collect", "--model", "{model}", "--limit", "1", "--samples", "1"]
TRAIN = ["train", "--model", "{model}", "--data", "{in}/data"]
AFTER_WORK = "after work"  # the error follows the status lines of the work before it

CASES = [
    # empty sources
    ([*JSONL, "path={in}/empty.jsonl"], "empty.jsonl holds no records; give one JSON object"),
    ([*JSONL, "path={in}/blank.jsonl"], "blank.jsonl holds no records"),
    ([*JSONL, "path={in}/empty_folder"], "has no test.jsonl or test.parquet for split 'test'"),
    ([*COLLECT, "--task", "jsonl", "--task-option", "path={in}/empty.jsonl"], "holds no records"),
    ([*COLLECT, "--limit", "3", "--shard", "5/8"], "shard 5/8 has no problems, the split has"),
    (
        ["build-data", "--episodes", "{in}/empty_collection"],
        "empty_collection/episodes.jsonl holds no records; run `rise collect` first",
    ),
    (
        ["build-data", "--episodes", "{in}/empty_folder"],
        "empty_folder/episodes.jsonl does not exist; run `rise collect` first",
    ),
    (
        ["train", "--model", "{model}", "--data", "{in}/empty_data"],
        "empty_data/data.jsonl holds no records; run `rise build-data` first",
    ),
    (
        ["train", "--model", "{model}", "--data", "{in}/empty_folder"],
        "empty_folder/data.jsonl does not exist; run `rise build-data` first",
    ),
    (
        ["compare", "--base", "{in}/empty_collection", "--models", "x={in}/empty_collection"],
        "episodes.jsonl holds no records; run `rise evaluate` first",
    ),
    (["merge", "--shards", "{in}/empty_folder"], "is not a `rise collect` folder"),
    # wrong types or values in the user's records, named by file:line
    (
        [*JSONL, "path={in}/number_question.jsonl"],
        "number_question.jsonl:1: field 'question' must be text, got int 12; "
        "write it as a JSON string",
    ),
    (
        [*JSONL, "path={in}/list_question.jsonl"],
        "list_question.jsonl:1: field 'question' must be text, got list",
    ),
    (
        [*JSONL, "path={in}/blank_question.jsonl"],
        "blank_question.jsonl:1: field 'question' is empty",
    ),
    (
        [*JSONL, "path={in}/dict_answer.jsonl"],
        "dict_answer.jsonl:1: field 'answer' must be text, got dict",
    ),
    (
        [*JSONL, "path={in}/list_id.jsonl"],
        "list_id.jsonl:1: field 'id' must be text or an integer, got list",
    ),
    (
        [*JSONL, "path={in}/no_question.jsonl"],
        "no_question.jsonl:1: missing field 'question' (set question_field=NAME",
    ),
    (
        [*JSONL, "path={in}/torn.jsonl"],
        "torn.jsonl:2: not valid JSON (Expecting value); fix or delete the line",
    ),
    (
        [*JSONL, "path={in}/not_object.jsonl"],
        "not_object.jsonl:1: expected a JSON object, got list",
    ),
    ([*JSONL, "path={in}/twice.jsonl"], "twice.jsonl:2: problem id 'p1' repeats"),
    (
        ["build-data", "--episodes", "{in}/torn_collection"],
        "torn_collection/episodes.jsonl:1: not valid JSON",
    ),
    (
        ["build-data", "--episodes", "{in}/ok.jsonl"],
        "ok.jsonl:1: missing field(s) problem_id, turns for a CollectedEpisode",
    ),
    # wrong types or values in settings and YAML configs
    ([*EVAL, "--limit", "ten"], "--limit: Input should be a valid integer"),
    ([*EVAL, "--task", "nope"], "unknown task 'nope'"),
    ([*EVAL, "--split", "dev"], "unknown split 'dev'"),
    ([*EVAL, "--task-option", "bogus=1"], "no option(s) bogus"),
    ([*EVAL, "--task-option", "max_steps=x"], "option max_steps: Input should be a valid integer"),
    ([*EVAL, "--task-option", "max_steps=0"], "arith: need 1 <= min_steps <= max_steps"),
    ([*EVAL, "--turns", "0"], "turns must be at least 1"),
    (
        [*EVAL, "--turns", "2", "--context-window", "3"],
        "context_window must be between 1 and turns (2)",
    ),
    (
        [*EVAL, "--device", "tpu"],
        "evaluate: device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'",
    ),
    ([*EVAL, "--dtype", "float8"], "unknown dtype 'float8'; choose auto"),
    ([*COLLECT, "--selection", "nope"], "collect: selection must be one of first, closest"),
    ([*COLLECT, "--shard", "2"], "collect: shard must be I/N"),
    ([*COLLECT, "--turns", "1", "--keep-states"], "keep_states needs context_window >= 2"),
    (
        ["build-data", "--episodes", "{in}/collection", "--criteria", "nope"],
        "criteria must be one of all",
    ),
    (
        [*TRAIN, "--trainer-arg", "bogus=1"],
        "trainer_args.bogus is not a field of transformers' TrainingArguments",
    ),
    ([*TRAIN, "--device", "tpu"], "train: device must be auto or cpu"),
    (["toy-model", "--hidden", "30", "--heads", "4"], "hidden (30) must be divisible by heads (4)"),
    (
        ["toy-model", "--task-option", "bogus=1"],
        "toy-model: task_options bogus unknown; its options are",
    ),
    (
        ["toy-model", "--task-option", "max_steps=x"],
        "option max_steps: Input should be a valid integer",
    ),
    (["compare", "--base", "{in}/collection"], "compare: give at least one model as --models"),
    (
        ["compare", "--base", "{in}/c", "--models", "a={in}/c", "a={in}/d"],
        "two models share a label",
    ),
    (["serve", "{model}", "--port", "70000"], "serve: port must be in 0..65535, got 70000"),
    (
        ["serve", "{model}", "--rise-turns", "2", "--context-window", "3"],
        "serve: context_window must be between 1 and turns (2), got 3",
    ),
    (["serve", "{model}", "--device", "tpu"], "serve: device must be auto"),
    (["demo", "--recipes", "nope"], "demo: recipes must be some of reference, levers"),
    (["run", "{in}/bad.yaml"], "bad.yaml:3: invalid YAML"),
    (["run", "{in}/list.yaml"], "list.yaml: expected a mapping of settings at the top level"),
    (["run", "{in}/unknown.yaml"], "unknown.yaml.bogus: unknown setting; known: base_model"),
    (
        ["run", "{in}/wrong_type.yaml"],
        "wrong_type.yaml.iterations: Input should be a valid integer",
    ),
    (["run", "{in}/section.yaml"], "section.yaml.collect: Input should be a valid dictionary"),
    (
        ["run", "{in}/window.yaml"],
        "window.yaml: evaluate: context_window must be between 1 and turns (2), got 3",
    ),
    (
        ["run", "{in}/owned.yaml"],
        "owned.yaml: run: collect.model is set by the run itself; remove it",
    ),
    (["run", "{in}/task_option.yaml"], "task 'arith' has no option(s) bogus"),
    (["run", "{in}/fine.yaml", "--set", "iterations"], "override 'iterations': expected KEY=VALUE"),
    (["run", "{in}/fine.yaml", "--set", "evaluate.turns=0"], "evaluate: turns must be at least 1"),
    # settings that make a run meaningless
    (
        [*EVAL, "--max-new-tokens", "0"],
        "evaluate: max_new_tokens must be at least 1 (or unset for the task's default), got 0",
    ),
    ([*EVAL, "--temperature", "-1"], "evaluate: temperature must be 0 (greedy) or more, got -1.0"),
    ([*EVAL, "--top-p", "0"], "evaluate: top_p must be in (0, 1] (1 turns it off), got 0.0"),
    ([*EVAL, "--top-p", "1.5"], "top_p must be in (0, 1]"),
    ([*EVAL, "--limit", "0"], "limit must be at least 1"),
    ([*EVAL, "--batch-size", "0"], "evaluate: batch_size must be at least 1, got 0"),
    ([*COLLECT, "--samples", "0"], "collect: samples must be at least 1, got 0"),
    ([*COLLECT, "--max-new-tokens", "0"], "collect: max_new_tokens must be at least 1"),
    ([*COLLECT, "--temperature", "-0.5"], "collect: temperature must be 0 (greedy) or more"),
    ([*COLLECT, "--max-word-repeats", "0"], "collect: max_word_repeats must be at least 1, got 0"),
    ([*COLLECT, "--chunk-size", "0"], "collect: chunk_size must be at least 1, got 0"),
    (
        ["build-data", "--episodes", "{in}/collection", "--tau", "0"],
        "tau must be positive, got 0.0",
    ),
    (
        ["build-data", "--episodes", "{in}/collection", "--keep-ratio", "-1"],
        "keep_ratio must be 0 or more",
    ),
    ([*TRAIN, "--epochs", "0"], "train: give epochs > 0 or max_steps > 0"),
    ([*TRAIN, "--lr", "0"], "train: lr must be positive, got 0.0"),
    ([*TRAIN, "--batch-size", "0"], "train: batch_size must be at least 1, got 0"),
    (
        [*TRAIN, "--lora", "--lora-r", "0"],
        "train: lora_r must be at least 1 and lora_alpha positive",
    ),
    ([*TRAIN, "--lora-dropout", "1.5"], "train: lora_dropout must be in [0, 1), got 1.5"),
    ([*TRAIN, "--weight-decay", "-1"], "train: weight_decay must be 0 or more"),
    ([*TRAIN, "--warmup-ratio", "1.5"], "warmup_ratio is a fraction of the steps in [0, 1)"),
    ([*TRAIN, "--max-length", "5"], "train: every example is longer than max_length=5"),
    (["toy-model", "--lr", "0"], "toy-model: lr must be positive, got 0.0"),
    (["toy-model", "--steps", "0"], "toy-model: steps must be at least 1, got 0"),
    (["toy-model", "--eval-problems", "0"], "toy-model: eval_problems must be at least 1, got 0"),
    (["toy-model", "--warmup", "-1"], "toy-model: warmup must be 0 or more steps"),
    (
        ["toy-model", "--tokenizer", "words"],
        "toy-model: tokenizer must be one of characters, phrases, got 'words'",
    ),
    (
        ["toy-model", "--conversation-weights", "0", "0"],
        "conversation_weights must be non-negative, not empty and not all 0",
    ),
    (["serve", "{model}", "--max-n", "0"], "serve: max_n must be at least 1, got 0"),
    (
        ["run", "{in}/no_iterations.yaml"],
        "no_iterations.yaml: run: iterations must be at least 1, got 0",
    ),
    (["run", "{in}/train_lr.yaml"], "train_lr.yaml: train: lr must be positive, got 0.0"),
    (["run", "{in}/samples.yaml"], "samples.yaml: collect: samples must be at least 1, got -1"),
    # paths of the wrong kind
    (
        [*EVAL, "--out", "{in}/a_file"],
        "evaluate: out {in}/a_file is a file, not a folder; give a folder path",
    ),
    (
        [*EVAL, "--out", "{in}/a_file/run"],
        "out {in}/a_file/run cannot be a folder: {in}/a_file is a file",
    ),
    (["evaluate", "--model", "{in}/a_file"], "model path '{in}/a_file' is a file but not a .gguf"),
    (
        ["evaluate", "--model", "{in}/empty_folder"],
        "model folder '{in}/empty_folder' holds no config.json",
    ),
    (["evaluate", "--model", "./missing/model"], "model path './missing/model' does not exist"),
    ([*EVAL, "--chat-template", "{in}/empty_folder"], "is neither a file nor a Jinja template"),
    ([*EVAL, "--chat-template", "{% for %}"], "chat_template: not a valid Jinja template (line 1"),
    ([*COLLECT, "--out", "{in}/a_file"], "collect: out {in}/a_file is a file, not a folder"),
    ([*COLLECT, "--teacher", "{in}/a_file"], "model path '{in}/a_file' is a file but not a .gguf"),
    (
        ["build-data", "--episodes", "{in}/collection", "--out", "{in}/a_file"],
        "build-data: out {in}/a_file is a file",
    ),
    ([*TRAIN, "--out", "{in}/a_file"], "train: out {in}/a_file is a file, not a folder"),
    (
        ["train", "--model", "{in}/a_file", "--data", "{in}/data"],
        "model path '{in}/a_file' is a file but not a .gguf",
    ),
    (
        [*TRAIN, "--deepspeed", "{in}/missing.json"],
        "deepspeed config '{in}/missing.json' does not exist",
    ),
    (
        ["toy-model", "--out", "{in}/a_file/toy"],
        "toy-model: out {in}/a_file/toy cannot be a folder",
    ),
    (
        ["merge", "--shards", "{in}/collection", "--out", "{in}/a_file"],
        "merge: out {in}/a_file is a file",
    ),
    (
        ["compare", "--base", "{in}/c", "--models", "{in}/c", "--out", "{in}/a_file"],
        "compare: out {in}/a_file is a file",
    ),
    (["demo", "--out", "{in}/a_file"], "demo: out {in}/a_file is a file, not a folder"),
    (["run", "{in}/config_folder"], "config file {in}/config_folder is a folder; give a YAML file"),
    (["run", "{in}/missing.yaml"], "config file {in}/missing.yaml does not exist"),
    (
        ["run", "{in}/fine.yaml", "--out", "{in}/a_file"],
        "run: out {in}/a_file is a file, not a folder",
    ),
    (
        ["run", "{in}/bad_model.yaml"],
        "model folder '{in}/empty_folder' holds no config.json",
        AFTER_WORK,
    ),
    # exceptions from the user's code
    (
        [
            *JSONL,
            "path={in}/ok.jsonl",
            "--task-option",
            "verifier={in}/check.py:boom",
            "--max-new-tokens",
            "4",
        ],
        "verifier '{in}/check.py:boom' raised KeyError: 'no such field' on problem p1 "
        "(at {in}/check.py:3 in boom); fix the verifier",
        AFTER_WORK,
    ),
    (
        [
            *JSONL,
            "path={in}/ok.jsonl",
            "--task-option",
            "verifier={in}/check.py:says_yes",
            "--max-new-tokens",
            "4",
        ],
        "verifier '{in}/check.py:says_yes' returned 'yes' for problem p1; "
        "return 1 (correct), 0 (wrong), -1 (no answer) or a Verdict",
        AFTER_WORK,
    ),
    (
        [*COLLECT, "--verifier", "{in}/check.py:boom", "--max-new-tokens", "4"],
        "raised KeyError: 'no such field' on problem arith-",
        AFTER_WORK,
    ),
    (
        [*JSONL, "path={in}/ok.jsonl", "--task-option", "verifier={in}/syntax.py:verify"],
        "importing {in}/syntax.py failed (SyntaxError",
    ),
    (
        [*JSONL, "path={in}/ok.jsonl", "--task-option", "verifier={in}/check.py:nope"],
        "has no function 'nope'; it defines: boom, says_yes",
    ),
    (
        [*JSONL, "path={in}/ok.jsonl", "--task-option", "verifier=no_such_module:verify"],
        "no module named 'no_such_module'",
    ),
]


def _case_id(case: tuple) -> str:
    return " ".join(case[0])[:70]


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(
    case, inputs, tiny_model_dir, tmp_path, capsys
):
    argv, expected, *flags = case
    fill = {"{model}": str(tiny_model_dir), "{in}": str(inputs)}

    def filled(text: str) -> str:
        for key, value in fill.items():
            text = text.replace(key, value)
        return text

    argv = [filled(a) for a in argv]
    out = tmp_path / "out"
    takes_out = argv[0] not in ("run", "serve", "compare") and "--out" not in argv
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(main([*argv, "--out", str(out)] if takes_out else argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    if AFTER_WORK in flags:  # progress lines, then the error
        assert sum("error:" in line for line in lines) == 1
    else:
        assert len(lines) == 1, err
    assert lines[-1].startswith(f"rise {argv[0]}: error: "), lines[-1]
    assert filled(expected) in lines[-1]
    left = [p.name for p in out.rglob("*") if p.name in TRUSTED] if out.exists() else []
    assert left == [], f"a failed run left {left} in its out folder"
    assert not (inputs / "unused").exists()  # the run configs' out folder


def test_at_least_fifty_cases_over_every_command():
    commands = {case[0][0] for case in CASES}
    assert len(CASES) >= 50
    assert commands >= {"evaluate", "collect", "build-data", "train", "toy-model", "run"}
    assert commands >= {"merge", "compare", "serve", "demo"}


def test_a_full_disk_is_one_line_and_leaves_no_half_file(inputs, tmp_path, monkeypatch, capsys):
    """ENOSPC while writing: one line naming the file and the fix; data.jsonl is written beside
    its place and renamed, so no short file is left for `rise train` to read."""

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a real write says it

    monkeypatch.setattr("rise_llm.records.os.fsync", full)
    out = tmp_path / "data"
    code = main(["build-data", "--episodes", str(inputs / "collection"), "--out", str(out)])
    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "config.json: No space left on device; free some space or give another out" in line
    assert not out.exists() or list(out.iterdir()) == []  # no short file, no .partial


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_a_read_only_out_folder_is_refused_before_any_work(inputs, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code = main(
        ["build-data", "--episodes", str(inputs / "collection"), "--out", str(locked / "d")]
    )
    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"out {locked / 'd'} is not writable ({locked} is read-only" in line
