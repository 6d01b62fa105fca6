"""Kill -9 anywhere (issue 15): a `rise run` with served checkpoints, killed with SIGKILL at
eleven moments spread over the whole run and rerun after each kill, ends as an uninterrupted run
of the same command ends.

The moments are fractions of one uninterrupted run's duration, one drawn in each eleventh of it
from a seeded `random.Random` (a fixed seed, or RISE_KILL_SEED=N); the seed is printed, and
RISE_KILL_SEED=N draws a failure's moments again (where they land also depends on the
machine's speed). A rerun skips what is done, so its clock runs ahead of the reference's: each
rerun is killed when it reaches the reference's moment, read off the status lines both print
(`Position`). After every kill no process of the run may be left, and at the end every episode
is stored once, every artefact parses, no finished stage was redone, and the summary is the
uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import rise_llm
from rise_llm.records import CollectedEpisode, Episode, TrainingExample, read_jsonl

QUICK = Path(__file__).resolve().parents[1] / "configs" / "arith-toy-quick.yaml"
SEED_ENV = "RISE_KILL_SEED"
DEFAULT_SEED = 1338004439  # the same moments in every CI run; RISE_KILL_SEED=N draws others
MOMENTS = 11
LANDED = 10  # at least this many kills must hit a running process
LEFTOVER_WAIT = 30.0  # parent_watch: SIGTERM within 0.5 s of the kill, SIGKILL 20 s later
PNG = b"\x89PNG\r\n\x1a\n"


def quick_config(path: Path, model: Path, out: Path) -> dict:
    """configs/arith-toy-quick.yaml on the tiny model, one iteration, every sample served by
    `rise serve` (from this interpreter), written to `path`."""
    config = yaml.safe_load(QUICK.read_text())
    serve = f"{sys.executable} -m rise_llm serve {{model}} --port {{port}} --device cpu"
    config |= {
        "base_model": str(model),
        "out": str(out),
        "iterations": 1,  # a second one repeats the same stages and doubles the test's time
        "evaluate": config["evaluate"] | {"limit": 6, "turns": 3},
        "device": "cpu",
        "server": {
            "command": f"{serve} --batch-size 16",
            "stages": ["collect", "evaluate"],
            "startup_timeout": 300,
            "engine_options": {"max_concurrency": 4, "timeout": 120},
        },
    }
    path.write_text(yaml.safe_dump(config))
    return config


def event(line: str) -> str | None:
    """What a status line says happened, without its numbers: a stage's rule, a finished
    turn, a collection written, a server ready or stopped, the summary written."""
    line = line.strip()
    if line.startswith("─"):
        return "start " + line.strip("─ ").split(" with ")[0]
    if "━" in line:
        return "done " + line.split("━")[0].strip()
    for known in ("server: ready", "server: stopped", "collect: ", "wrote "):
        if line.startswith(known):
            return known.strip()
    return None


@dataclass
class Run:
    """A `rise run` in a session of its own, its stderr read line by line with timestamps."""

    proc: subprocess.Popen
    start: float
    lines: list[tuple[float, str]] = field(default_factory=list)

    def events(self) -> list[tuple[str, float]]:
        """(stage / event, seconds since the start) of each status line so far, in order."""
        found, stage = [], ""
        for t, line in list(self.lines):
            what = event(line)
            if what is None:
                continue
            stage = what if what.startswith("start ") else stage
            found.append((what if what == stage else f"{stage} / {what}", t - self.start))
        return found

    def stage(self) -> str:
        """Where the run is: its stage, and whether its server is starting or up."""
        stage, server = "start-up", "no server"
        for _, line in list(self.lines):
            what = event(line)
            if what and what.startswith("start "):
                stage = what.removeprefix("start ")
            elif line.startswith("server: ") and "(log:" in line:
                server = "server starting"
            elif what == "server: ready":
                server = "server up"
            elif what == "server: stopped":
                server = "no server"
        return f"{stage}, {server}"

    def stderr(self) -> str:
        return "".join(line for _, line in self.lines)[-3000:]


def start_run(config: Path) -> Run:
    """`rise run CONFIG` with the rise_llm this test imported (in the run and its servers)."""
    env = dict(os.environ)
    src = str(Path(rise_llm.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "rise_llm", "run", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    run = Run(proc, time.monotonic())

    def read() -> None:
        with proc.stderr:
            for line in proc.stderr:
                run.lines.append((time.monotonic(), line))

    threading.Thread(target=read, daemon=True).start()
    return run


class Position:
    """How far a rerun is, in seconds of the uninterrupted reference run: the reference's time
    of the last event they share, plus the time since the rerun printed it (rerun events that
    the reference has not, such as "already done", are skipped)."""

    def __init__(self, reference: list[tuple[str, float]]):
        self.at = dict(reference)

    def __call__(self, run: Run) -> float:
        anchor, since = 0.0, 0.0
        for what, t in run.events():
            if what in self.at and self.at[what] >= anchor:
                anchor, since = self.at[what], t
        return anchor + (time.monotonic() - run.start) - since


def processes_mentioning(texts: list[str]) -> list[str]:
    """Command lines of live processes that mention any of `texts` (zombies have none)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, UnicodeDecodeError):
            continue
        if any(text in command for text in texts):
            found.append(f"{entry.name}: {command[:200]}")
    return found


def left_behind(texts: list[str], within: float = LEFTOVER_WAIT) -> list[str]:
    """The processes mentioning `texts` still alive after up to `within` seconds; they are
    killed, so a failing test leaves none behind either."""
    deadline = time.monotonic() + within
    while (found := processes_mentioning(texts)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for process in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(process.split(":")[0]), signal.SIGKILL)
    return found


def finished_outputs(out: Path, collect_limit: int) -> dict[Path, int]:
    """st_mtime_ns of the outputs of every stage that has finished: an evaluation once its
    metrics.json exists, a collection once it holds every problem, the data once data.jsonl
    exists (written whole), a training once train.json exists (written after the model)."""
    outputs: list[Path] = []
    for evaluation in out.glob("*/eval"):
        if (evaluation / "metrics.json").exists():
            outputs += [evaluation / "metrics.json", evaluation / "episodes.jsonl"]
    for collection in out.glob("*/collect/episodes.jsonl"):
        if collection.read_text().count("\n") == collect_limit:
            outputs.append(collection)
    outputs += out.glob("*/data/data.jsonl")
    for trained in out.glob("*/train/train.json"):
        outputs += [trained, *(trained.parent / "model").iterdir()]
    return {path: path.stat().st_mtime_ns for path in outputs}


def assert_artefacts_parse(out: Path) -> None:
    """Every JSON, JSON Lines, safetensors, torch, PNG and HTML file of the run reads whole; no
    temporary `.partial` file of an atomic write is left."""
    for path in sorted(out.rglob("*")):
        if path.is_dir() or path.suffix in (".log", ".jinja", ".txt"):
            continue
        assert not path.name.endswith(".partial"), f"left over: {path}"
        if path.suffix in (".json", ".pid"):
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            text = path.read_text()
            assert text.endswith("\n"), f"{path}: torn last line"
            for line in text.splitlines():
                json.loads(line)
        elif path.suffix == ".safetensors":
            load_file(path)
        elif path.suffix in (".pt", ".pth", ".bin"):
            torch.load(path, weights_only=False)
        elif path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG, path
        elif path.suffix == ".html":  # `rise report`'s page: whole, its data readable
            text = path.read_text()
            assert text.endswith("</html>\n"), f"{path}: cut short"
            start = text.index('<script id="report-data" type="application/json">')
            json.loads(text[text.index(">", start) + 1 : text.index("</script>", start)])
        else:
            raise AssertionError(f"unexpected artefact {path}: teach this test to read it")


def assert_each_episode_once(out: Path, config: dict) -> None:
    """Each evaluation holds every (mode, problem, sample) once, each collection every problem
    once, and the data one example per chosen turn of the collection."""
    n, turns = config["evaluate"]["limit"], config["evaluate"]["turns"]
    for label in ("base", "iter1"):
        episodes = read_jsonl(out / label / "eval" / "episodes.jsonl", Episode)
        keys = Counter((e.mode, e.problem_id, e.sample) for e in episodes)
        assert max(keys.values()) == 1, f"{label}: repeated {keys.most_common(1)}"
        modes = Counter(e.mode for e in episodes)
        assert modes == {"no_oracle": n, "oracle": n, "parallel": n * turns}, label
        assert len({e.problem_id for e in episodes}) == n
    collected = read_jsonl(out / "iter1" / "collect" / "episodes.jsonl", CollectedEpisode)
    ids = Counter(e.problem_id for e in collected)
    assert len(ids) == sum(ids.values()) == config["collect"]["limit"], ids.most_common(2)
    examples = read_jsonl(out / "iter1" / "data" / "data.jsonl", TrainingExample)
    keys = Counter((ex.problem_id, ex.turn) for ex in examples)
    assert max(keys.values()) == 1, keys.most_common(1)
    chosen = {(e.problem_id, t.index) for e in collected for t in e.turns if t.chosen >= 0}
    assert set(keys) == chosen


def without_seconds(summary: dict) -> dict:
    """summary.json without each model's `seconds` (the wall-clock time of each mode)."""
    return {label: {k: v for k, v in m.items() if k != "seconds"} for label, m in summary.items()}


def first_difference(reference: Path, killed: Path) -> str:
    """The first stage output, in pipeline order, that differs between two run folders."""
    for name in ("base/eval/episodes.jsonl", "iter1/collect/episodes.jsonl"):
        ours, theirs = (killed / name).read_text(), (reference / name).read_text()
        if ours != theirs:
            differ = len(set(ours.splitlines()) ^ set(theirs.splitlines())) // 2
            return f"{name}: {differ} lines differ"
    name = "iter1/data/data.jsonl"
    if (killed / name).read_text() != (reference / name).read_text():
        return f"{name} differs"
    model = "iter1/train/model/model.safetensors"
    ours, theirs = load_file(killed / model), load_file(reference / model)
    changed = [k for k in theirs if not torch.equal(ours[k], theirs[k])]
    if changed:
        return f"{model}: {len(changed)} tensors differ, e.g. {changed[0]}"
    return "iter1/eval/episodes.jsonl (the first outputs that differ)"


@dataclass
class Kill:
    """One kill: its moment (seconds of the reference run), where the rerun was, how long it
    had run, how many server processes (watcher and server) it had, and how long they took to
    go once it was killed."""

    moment: float
    where: str = "none: the rerun had finished"
    alive: float = 0.0
    servers: int = 0
    cleanup: float | None = None

    @property
    def landed(self) -> bool:
        return self.alive > 0

    def __str__(self) -> str:
        if not self.landed:
            return f"kill at {self.moment:5.1f} s: {self.where}"
        gone = "" if self.cleanup is None else f"; all gone {self.cleanup:.1f} s later"
        return (
            f"kill at {self.moment:5.1f} s: {self.where}, {self.servers} server processes, "
            f"after {self.alive:.1f} s of the rerun{gone}"
        )


def kill_at(moment: float, config: Path, position: Position, ours: list[str], why: str) -> Kill:
    """Rerun `config`, SIGKILL it when it reaches `moment` of the reference run, and wait until
    no process mentioning `ours` is left."""
    run, kill = start_run(config), Kill(moment)
    while run.proc.poll() is None and position(run) < moment:
        time.sleep(0.02)
    if run.proc.poll() is None:
        kill.where = run.stage()
        kill.servers = sum("rise_llm serve" in p for p in processes_mentioning(ours))
        os.kill(run.proc.pid, signal.SIGKILL)
        kill.alive = time.monotonic() - run.start
    code = run.proc.wait()
    assert kill.landed or code == 0, f"the rerun failed {why}:\n{run.stderr()}"
    gone = time.monotonic()
    leftovers = left_behind(ours)
    assert not leftovers, f"left running after the {kill} {why}: {leftovers}"
    kill.cleanup = time.monotonic() - gone
    return kill


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rise_run_killed_anywhere_resumes_to_the_same_result(tiny_model_dir, tmp_path):
    seed = int(os.environ.get(SEED_ENV) or DEFAULT_SEED)
    why = f"(replay with {SEED_ENV}={seed})"
    print(f"kill moments seed {seed} {why}")
    started = time.monotonic()
    reference_out, out = tmp_path / "reference", tmp_path / "killed"
    config = quick_config(tmp_path / "reference.yaml", tiny_model_dir, reference_out)
    quick_config(tmp_path / "killed.yaml", tiny_model_dir, out)
    ours = [str(out), str(tiny_model_dir), str(tmp_path / "killed.yaml")]

    reference = start_run(tmp_path / "reference.yaml")
    assert reference.proc.wait(600) == 0, reference.stderr()
    duration = time.monotonic() - reference.start
    position = Position(reference.events())
    rng = random.Random(seed)
    moments = [(i + rng.random()) / MOMENTS * duration for i in range(MOMENTS)]
    stages = [
        f"{w.removeprefix('start ')} at {t:.1f} s" for w, t in position.at.items() if " / " not in w
    ]
    print(f"uninterrupted run: {duration:.1f} s; {', '.join(stages)}")

    stamps: dict[Path, int] = {}
    kills = []
    for moment in moments:
        kills.append(kill_at(moment, tmp_path / "killed.yaml", position, ours, why))
        print(kills[-1])
        now = finished_outputs(out, config["collect"]["limit"])
        redone = sorted(str(p) for p in stamps if now.get(p) != stamps[p])
        assert not redone, f"finished outputs rewritten after the {kills[-1]} {why}: {redone}"
        stamps |= now
    assert sum(k.landed for k in kills) >= LANDED, f"too few kills hit a running process {why}"
    # the leftover check can see a server: some kill hit a running one
    assert any(k.servers for k in kills), f"no kill hit a running server {why}"

    last = start_run(tmp_path / "killed.yaml")
    assert last.proc.wait(600) == 0, f"{why}\n{last.stderr()}"
    assert not left_behind(ours), why
    print(f"killed {sum(k.landed for k in kills)} times; test: {time.monotonic() - started:.1f} s")

    assert_each_episode_once(out, config)
    assert_artefacts_parse(out)
    now = finished_outputs(out, config["collect"]["limit"])
    assert {p: now.get(p) for p in stamps} == stamps, f"a finished stage was redone {why}"
    summary = json.loads((out / "summary.json").read_text())
    expected = json.loads((reference_out / "summary.json").read_text())
    assert without_seconds(summary) == without_seconds(expected), (
        f"summary differs from the uninterrupted run's {why}; first differing stage output: "
        f"{first_difference(reference_out, out)}"
    )
    comparisons = (out / "comparisons.json").read_bytes()
    assert comparisons == (reference_out / "comparisons.json").read_bytes(), why
