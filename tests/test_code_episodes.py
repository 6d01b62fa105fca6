"""The code tasks end to end (issue 17 item 6): `rise evaluate`, `rise collect` and `rise run` on
`humaneval` and `mbpp`, with a scripted engine whose next attempt depends on what the retry
message told it, and with the toy model (which scores 0: it was only taught arith). Model code
runs in the real sandbox (bubblewrap). A collection whose samples are hostile programs goes on
and loses no episode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from code_problems import (
    CLOSE_OK,
    CLOSE_OVERFIT,
    CLOSE_WRONG,
    HUMANEVAL_0,
    MBPP_RECORDS,
    write_jsonl,
)

from rise_llm import collect, evaluate
from rise_llm.cli import main
from rise_llm.engines.base import Completion
from rise_llm.records import CollectedEpisode, Episode, read_jsonl

SANDBOXED = pytest.mark.usefixtures("needs_sandbox")  # skip where bwrap cannot run (CI: fail)
FAILED = "Visible test 1 of 2 failed"
PASSED = "All visible tests passed"


class Scripted:
    """Answers each conversation with `script(conversation)`, the same for its n samples or
    one per sample when it returns a list; keeps every last message it was shown."""

    def __init__(self, script):
        self.script = script
        self.shown: list[str] = []

    def generate(self, conversations, n=1, params=None, desc="", keys=None):
        out = []
        for conv in conversations:
            self.shown.append(conv[-1]["content"])
            texts = self.script(conv)
            texts = texts if isinstance(texts, list) else [texts] * n
            out.append([Completion(t, len(t), "stop") for t in texts[:n]])
        return out


def repairs_when_told(conv) -> str:
    """HumanEval/0: wrong first; told a visible test failed, it overfits the docstring's two
    examples (the visible tests pass, hidden ones fail); told they passed, it writes it right."""
    if len(conv) == 1:
        return CLOSE_WRONG
    return CLOSE_OVERFIT if FAILED in conv[-1]["content"] else CLOSE_OK


@pytest.fixture(scope="module")
def humaneval_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("he") / "he.jsonl", [HUMANEVAL_0])


@SANDBOXED
def test_evaluate_feedback_from_visible_tests_reward_from_hidden(tmp_path, humaneval_file):
    engine = Scripted(repairs_when_told)
    config = evaluate.EvaluateConfig(
        model="scripted",
        task="humaneval",
        task_options={"data": str(humaneval_file)},
        turns=4,
        out=str(tmp_path / "eval"),
    )
    result = evaluate.run(config, engine=engine)
    (no_oracle,) = [ep for ep in result.episodes if ep.mode == "no_oracle"]
    rewards = [t.reward for t in no_oracle.turns]
    # turn 2 passes both visible tests and fails the hidden ones: the reward is the hidden tests'
    assert rewards == [0, 0, 1, 1]
    first, second, third, _ = no_oracle.turns
    assert first.feedback.startswith(FAILED)
    assert second.feedback.startswith(PASSED) and third.feedback.startswith(PASSED)
    # each retry message carries the feedback on the attempt before it, in the code template
    assert second.messages[-1]["content"].startswith("Your code did not pass the tests.\n" + FAILED)
    assert PASSED in third.messages[-1]["content"]
    assert no_oracle.turns[-1].messages[-1]["content"].endswith(HUMANEVAL_0["prompt"])
    # without the oracle: all K turns; with it: stop at the first hidden pass (turn 3)
    (oracle,) = [ep for ep in result.episodes if ep.mode == "oracle"]
    assert len(oracle.turns) == 3
    assert result.metrics.acc == [0.0, 0.0, 1.0, 1.0] and result.metrics.oracle == 1.0
    stored = read_jsonl(tmp_path / "eval" / "episodes.jsonl", Episode)
    assert [t.feedback for t in stored[0].turns] == [t.feedback for t in no_oracle.turns]


@SANDBOXED
def test_collect_states_carry_the_visible_feedback(tmp_path, mbpp_folder):
    """MBPP: a wrong attempt; at turn 2 the samples see the failing first test, and the episode
    goes on only while no sample passes the hidden tests."""

    def script(conv):
        if len(conv) == 1:  # wrong on the visible test, so the feedback names it
            return (
                "```python\ndef remove_Occ(s, ch):\n    return s\n\n"
                "def is_not_prime(n):\n    return False\n```"
            )
        code = "\n".join(MBPP_RECORDS[k]["code"] for k in range(2)).replace("\r", "")
        return ["no code at all", f"```python\n{code}\n```"]

    engine = Scripted(script)
    config = collect.CollectConfig(
        model="scripted",
        out=str(tmp_path / "collect"),
        task="mbpp",
        task_options={"data": str(mbpp_folder)},
        limit=None,
        samples=2,
    )
    episodes = collect.run(config, learner=engine)
    assert len(episodes) == 2
    for ep in episodes:
        first, second = ep.turns
        assert first.attempts[0].reward == 0  # is_not_prime passes its visible test only
        assert first.attempts[0].feedback.startswith(("Visible test 1 of 1 failed", PASSED))
        assert second.messages[-1]["content"].startswith(
            "Your code did not pass the tests.\n" + first.attempts[0].feedback
        )
        assert [a.reward for a in second.attempts] == [-1, 1]
        assert second.chosen == 1
        assert second.attempts[0].feedback.startswith("No ```python code block found")
    stored = read_jsonl(tmp_path / "collect" / "episodes.jsonl", CollectedEpisode)
    assert [t.attempts[0].feedback for t in stored[0].turns] == [
        t.attempts[0].feedback for t in episodes[0].turns
    ]


HOSTILE = {
    "infinite loop": "while True:\n    pass",
    "fork bomb": "import os\nwhile True:\n    os.fork()",
    "10 GB": "x = bytearray(10 * 1024**3)",
    "100 MB of output": "import sys\nsys.stdout.write('x' * 100_000_000)",
    "write outside": "open('/etc/rise-hostile', 'w').write('x')",
    "read home": "import pathlib\nprint(pathlib.Path('{home}').read_text())",
    "network": "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)",
    "kill parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(1, 9)",
    "input": "input()",
}


@SANDBOXED
def test_hostile_samples_are_verdicts_and_the_collection_goes_on(tmp_path, mbpp_folder):
    """Every sample of turn 2 is a hostile program (as the first function's body runs at
    import): each gets reward 0 with a feedback line, the secret stays unread, no connection
    arrives, and both episodes are written."""
    import socket

    home = Path.home() / f".rise-hostile-{tmp_path.name}"
    home.write_text("SECRET-HOME")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    port = listener.getsockname()[1]
    programs = [p.format(home=home, port=port) for p in HOSTILE.values()]
    try:

        def script(conv):
            if len(conv) == 1:
                return "```python\ndef f():\n    pass\n```"
            return [f"```python\n{p}\n```" for p in programs]

        config = collect.CollectConfig(
            model="scripted",
            out=str(tmp_path / "collect"),
            task="mbpp",
            # one check at a time: a fork bomb spinning on its process limit takes both cores
            # until its wall time, and would starve a neighbour into a timeout of its own
            task_options={"data": str(mbpp_folder), "timeout": 2, "concurrency": 1},
            limit=None,
            samples=len(programs),
        )
        episodes = collect.run(config, learner=Scripted(script))
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing connected
    finally:
        home.unlink()
        listener.close()
        written = Path("/etc/rise-hostile").exists()
        Path("/etc/rise-hostile").unlink(missing_ok=True)
    assert not written
    assert len(read_jsonl(tmp_path / "collect" / "episodes.jsonl", CollectedEpisode)) == 2
    for ep in episodes:
        attempts = ep.turns[1].attempts
        feedback = dict(zip(HOSTILE, (a.feedback for a in attempts), strict=True))
        assert [a.reward for a in attempts] == [0] * len(HOSTILE)
        assert all(f and "SECRET" not in f for f in feedback.values())
        assert "timed out after 2 s" in feedback["infinite loop"]
        assert "(memory limit reached)" in feedback["10 GB"].splitlines()[0]
        assert "(process limit reached)" in feedback["fork bomb"].splitlines()[0]
        assert "output" in feedback["100 MB of output"]
        assert "EOFError" in feedback["input"]
        assert (
            "Read-only file system" in feedback["write outside"]
            or "ermission" in (feedback["write outside"])
        )
        assert "No such file" in feedback["read home"]


@SANDBOXED
def test_the_toy_through_the_cli_scores_zero(tmp_path, tiny_model_dir, humaneval_file, mbpp_folder):
    """`rise evaluate`, `rise collect` and `rise run` with the toy on the code tasks: it writes
    no code block (reward -1, the no-block feedback), and everything is recorded."""
    common = ["--model", str(tiny_model_dir), "--device", "cpu", "--max-new-tokens", "12"]
    he = ["--task", "humaneval", "--task-option", f"data={humaneval_file}"]
    out = tmp_path / "eval"
    assert main(["evaluate", *common, *he, "--turns", "2", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["acc@1"] == metrics["acc@2"] == 0.0
    episodes = read_jsonl(out / "episodes.jsonl", Episode)
    assert all(t.reward == -1 and t.feedback.startswith("No ```python") for t in episodes[0].turns)
    mb = ["--task", "mbpp", "--task-option", f"data={mbpp_folder}"]
    out = tmp_path / "collect"
    assert main(["collect", *common, *mb, "--samples", "2", "--out", str(out)]) == 0
    assert len(read_jsonl(out / "episodes.jsonl", CollectedEpisode)) == 2
    config = tmp_path / "run.yaml"
    config.write_text(
        f"base_model: {tiny_model_dir}\nout: {tmp_path / 'run'}\ntask: mbpp\n"
        f"task_options: {{data: {mbpp_folder}}}\ndevice: cpu\niterations: 1\n"
        "collect: {limit: 2, samples: 2, max_new_tokens: 12}\n"
        "train: {max_steps: 1, batch_size: 2}\n"
        "evaluate: {turns: 2, max_new_tokens: 12}\n"
    )
    assert main(["run", str(config)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(summary) == {"base", "iter1"}
    assert all(m["acc@2"] == 0.0 for m in summary.values())


def test_without_bwrap_the_cli_refuses_unless_allowed(tmp_path, tiny_model_dir, mbpp_folder):
    """A real `rise evaluate` process whose PATH has no bwrap: refused in one line before the
    model loads; with --allow-unsandboxed-code it runs."""
    env = {**os.environ, "PATH": str(tmp_path)}  # an empty folder: no bwrap on it
    command = [
        sys.executable,
        "-m",
        "rise_llm",
        "evaluate",
        *("--model", str(tiny_model_dir), "--device", "cpu", "--max-new-tokens", "8"),
        *("--task", "mbpp", "--task-option", f"data={mbpp_folder}", "--turns", "1"),
    ]
    out = tmp_path / "eval"
    refused = subprocess.run([*command, "--out", str(out)], env=env, capture_output=True, text=True)
    assert refused.returncode != 0
    (line,) = [ln for ln in refused.stderr.splitlines() if "sandbox" in ln]
    assert "bwrap" in line and "--allow-unsandboxed-code" in line
    assert not out.exists()  # refused before anything was written
    allowed = subprocess.run(
        [*command, "--out", str(out), "--allow-unsandboxed-code"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert allowed.returncode == 0, allowed.stderr
    assert (out / "metrics.json").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["task_options"]["allow_unsandboxed_code"] is True
