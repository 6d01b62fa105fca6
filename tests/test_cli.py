"""The `rise` command line: the real end-to-end path and every command's help (bad input to
every command: test_bad_input.py)."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_metrics_match_episodes

from rise_llm.cli import build_parser, main
from rise_llm.metrics import TRANSITIONS, compute_metrics
from rise_llm.records import Episode, read_jsonl

RISE = [str(Path(sys.executable).parent / "rise")]


@pytest.mark.slow
def test_toy_model_then_evaluate_through_the_command_line(tmp_path):
    model, run = tmp_path / "toy", tmp_path / "eval"
    build = [*RISE, "toy-model", "--out", str(model), "--steps", "30", "--layers", "2"]
    build += ["--hidden", "32", "--heads", "2", "--batch-size", "8", "--eval-problems", "8"]
    subprocess.run(build, check=True, capture_output=True, text=True)
    assert (model / "model.safetensors").exists() and (model / "tokenizer.json").exists()

    evaluate = [*RISE, "evaluate", "--model", str(model), "--turns", "3", "--limit", "12"]
    evaluate += ["--out", str(run), "--max-new-tokens", "24"]
    first = subprocess.run(evaluate, check=True, capture_output=True, text=True)
    assert "acc@3" in first.stdout and "p1@t3" in first.stdout  # the printed table

    metrics = json.loads((run / "metrics.json").read_text())
    assert_metrics_match_episodes(metrics, read_jsonl(run / "episodes.jsonl", Episode), 3)
    assert metrics["n"] == 12
    assert sum(metrics["transitions"]["1->2"][k] for k in TRANSITIONS) == 12
    episodes = read_jsonl(run / "episodes.jsonl", Episode)
    by_mode = {m: [e for e in episodes if e.mode == m] for m in ("no_oracle", "oracle", "parallel")}
    assert [len(v) for v in by_mode.values()] == [12, 12, 36]
    assert all(len(e.turns) == 3 for e in by_mode["no_oracle"])
    for e in by_mode["oracle"]:  # stops at the first correct attempt, never later
        assert all(not t.correct for t in e.turns[:-1])
        assert len(e.turns) == 3 or e.turns[-1].correct
    assert compute_metrics(episodes, 3).to_dict()["m1@t3"] == metrics["m1@t3"]

    # rerunning the same command redoes nothing and gives the same metrics
    again = subprocess.run(evaluate, check=True, capture_output=True, text=True)
    assert again.stderr.count("already done") == 3
    assert json.loads((run / "metrics.json").read_text())["p1@t3"] == metrics["p1@t3"]

    # a run killed after the first mode resumes the missing modes without duplicates
    lines = (run / "episodes.jsonl").read_text().splitlines(keepends=True)
    (run / "episodes.jsonl").write_text("".join(lines[:12]) + lines[12][:40])  # torn last line
    resumed_run = subprocess.run(evaluate, check=True, capture_output=True, text=True)
    assert "no_oracle: already done" in resumed_run.stderr
    assert "oracle: already done" not in resumed_run.stderr.replace("no_oracle", "")
    resumed = read_jsonl(run / "episodes.jsonl", Episode)
    keys = [(e.mode, e.problem_id, e.sample) for e in resumed]
    assert len(keys) == len(set(keys)) == 60


def _subcommands():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_flag_has_help_of_its_own(command):
    """Each config field documents itself: no flag without help, and no two flags of one
    command sharing a sentence (as `--task` and `--task-option` once did)."""
    helps = {}
    for action in _subcommands()[command]._actions:
        if not action.option_strings or action.dest == "help":
            continue
        text = re.sub(r"\s*\(default: .*\)$", "", action.help or "")
        assert text, f"rise {command} {action.option_strings[0]} has no help"
        helps[action.option_strings[0]] = text
    shared = [f for f in helps if list(helps.values()).count(helps[f]) > 1]
    assert shared == [], f"rise {command}: {shared} share one help text"


@pytest.mark.parametrize(
    "command",
    ["evaluate", "collect", "merge", "build-data", "train", "run", "demo", "toy-model", "serve"],
)
def test_every_command_prints_its_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: rise " + command)
    if command == "train":
        # a help line with `%` (warmup 4%) and one continued over two docstring lines
        assert "4%" in text
        assert '"adafactor" to save memory on a large model' in " ".join(text.split())
