"""`rise demo --quick` end to end through the command line, including a kill and a resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import assert_metrics_match_episodes
from safetensors.torch import load_file

from rise_llm.records import CollectedEpisode, Episode, read_jsonl

RISE = str(Path(sys.executable).parent / "rise")
LABELS = ("base", "iter1", "iter2")


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process ended before {path} appeared: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.05)


@pytest.mark.slow
def test_quick_demo_survives_a_kill_and_resumes(tmp_path):
    demo = tmp_path / "demo"
    out = demo / "reference"
    command = [RISE, "demo", "--quick", "--out", str(demo)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # kill it hard once iteration 1 has started training (base evaluated, data collected)
    _wait_for(out / "iter1" / "data" / "data.jsonl", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    base_metrics = out / "base" / "eval" / "metrics.json"
    stamps = {p: p.stat().st_mtime_ns for p in (base_metrics, out / "iter1/collect/episodes.jsonl")}

    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    # finished stages were not redone
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert "already done" in finished.stderr and "already in" in finished.stderr

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == set(LABELS)
    for label in LABELS:
        m = summary[label]
        assert m == json.loads((out / label / "eval" / "metrics.json").read_text())
        episodes = read_jsonl(out / label / "eval" / "episodes.jsonl", Episode)
        assert_metrics_match_episodes(m, episodes, 5)
        keys = [(e.mode, e.problem_id, e.sample) for e in episodes]
        assert len(keys) == len(set(keys)) == m["n"] * 7  # 1 + 1 sequential, 5 parallel
    for k in (1, 2):
        collected = read_jsonl(out / f"iter{k}" / "collect" / "episodes.jsonl", CollectedEpisode)
        ids = [e.problem_id for e in collected]
        assert len(ids) == len(set(ids)) == 12
    # every iteration changed the weights, and iteration 2 started from iteration 1
    toy = load_file(demo / "toy" / "model.safetensors")
    iter1 = load_file(out / "iter1" / "train" / "model" / "model.safetensors")
    iter2 = load_file(out / "iter2" / "train" / "model" / "model.safetensors")
    assert any(not torch.equal(toy[k], iter1[k]) for k in toy)
    assert any(not torch.equal(iter1[k], iter2[k]) for k in toy)
    assert json.loads((out / "iter2/collect/config.json").read_text())["config"]["model"].endswith(
        "iter1/train/model"
    )
    png = (out / "accuracy_by_turn.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    comparisons = json.loads((out / "comparisons.json").read_text())
    assert len(comparisons["iter2_vs_base"]) == 4
    config = json.loads((out / "config.json").read_text())
    assert config["versions"]["torch"] and config["config"]["iterations"] == 2
    assert config["machine"]["cpu"] and config["machine"]["cores"] >= 1  # figures name their CPU

    # the shared base is the toy that retracts its slips (lever 3)
    assert json.loads((demo / "toy/toy_model.json").read_text())["config"][
        "retraction_fraction"
    ] == pytest.approx(0.3)
    # the levers recipe: the same base evaluation; collected with the strict verifier, the
    # closest repair and keep states; iteration 2 trained from the toy on both iterations' data
    levers = demo / "levers"
    assert (levers / "base/eval/episodes.jsonl").read_bytes() == (
        out / "base/eval/episodes.jsonl"
    ).read_bytes()
    for k in (1, 2):
        record = json.loads((levers / f"iter{k}/collect/config.json").read_text())["config"]
        assert (record["verifier"], record["selection"], record["keep_states"]) == (
            "strict",
            "closest",
            True,
        )
        plain = json.loads((out / f"iter{k}/collect/config.json").read_text())["config"]
        assert (plain["verifier"], plain["selection"], plain["keep_states"]) == (
            None,
            "first",
            False,
        )
    trained = json.loads((levers / "iter2/train/train.json").read_text())["config"]
    assert trained["model"] == str(demo / "toy")
    built = json.loads((levers / "iter2/data/config.json").read_text())["config"]
    assert [Path(e).parent.name for e in built["episodes"]] == ["iter1", "iter2"]
    # both recipes beside the base, on the same problems
    rows = json.loads((demo / "comparison.json").read_text())["rows"]
    assert [r["label"] for r in rows] == [
        "base",
        "reference iter1",
        "reference iter2",
        "levers iter1",
        "levers iter2",
    ]
    assert {r["n"] for r in rows} == {summary["base"]["n"]}
    assert rows[2]["acc"] == [summary["iter2"][f"acc@{t}"] for t in range(1, 6)]
    assert "| levers iter2 |" in (demo / "comparison.md").read_text()
    # it ends by printing the path of one report of every recipe (each run has its own too)
    assert finished.stdout.rstrip().splitlines()[-1].startswith(f"wrote {demo / 'report.html'} (")
    page = (demo / "report.html").read_text()
    for label in ("reference base", "reference iter2", "levers iter1", "levers iter2"):
        assert f'<option value="{label}">' in page
    assert "levers base" not in page  # the shared base evaluation is shown once
    assert (out / "report.html").exists() and (demo / "levers" / "report.html").exists()


@pytest.mark.slow
def test_a_finished_run_can_grow_by_iterations_but_not_change(tmp_path, tiny_model_dir):
    from rise_llm.config import apply_overrides, build, load_yaml
    from rise_llm.errors import RiseError
    from rise_llm.pipeline import RunConfig, run

    recipe = Path(__file__).resolve().parents[1] / "configs" / "arith-toy-quick.yaml"
    settings = apply_overrides(
        load_yaml(recipe),
        [f"base_model={tiny_model_dir}", f"out={tmp_path / 'run'}", "iterations=1", "device=cpu"],
    )
    first = run(build(RunConfig, settings, "test"))
    assert set(first.metrics) == {"base", "iter1"}
    stamp = (tmp_path / "run/iter1/eval/metrics.json").stat().st_mtime_ns
    grown = run(build(RunConfig, {**settings, "iterations": 2}, "test"))
    assert set(grown.metrics) == {"base", "iter1", "iter2"}
    assert (tmp_path / "run/iter1/eval/metrics.json").stat().st_mtime_ns == stamp
    changed = {**settings, "iterations": 2, "collect": {**settings["collect"], "samples": 5}}
    with pytest.raises(RiseError, match=r"different settings \(collect\)"):
        run(build(RunConfig, changed, "test"))


def test_a_run_resumes_with_more_servers_but_not_with_another_server_command(tmp_path):
    """The servers' count, devices, start-up time and client options change how fast a run
    samples, not what: a rerun may change them; the command (what serves) it may not."""
    from rise_llm.errors import RiseError
    from rise_llm.pipeline import _check_settings, load_run_config, run_settings
    from rise_llm.provenance import write_run_record

    recipe = Path(__file__).resolve().parents[1] / "configs" / "arith-toy-quick.yaml"
    serve = "rise serve {model} --port {port}"

    def run_config(*overrides: str):
        return load_run_config(
            recipe, [f"out={tmp_path / 'run'}", f"server.command={serve}", *overrides]
        )

    first = run_config("server.replicas=2")
    write_run_record(first.root, run_settings(first))
    _check_settings(run_config("server.replicas=4", "server.devices_per_replica=2"))
    _check_settings(
        run_config("server.engine_options.max_concurrency=8", "server.startup_timeout=60")
    )
    with pytest.raises(RiseError, match=r"different settings \(server\)"):
        _check_settings(
            run_config("server.replicas=2", "server.command=vllm serve {model} --port {port}")
        )
    with pytest.raises(RiseError, match=r"different settings \(server\)"):
        _check_settings(run_config("server.replicas=2", "server.split_collection=true"))


def test_only_runs_of_one_base_with_one_evaluation_share_it(tmp_path):
    from rise_llm.demo import DemoConfig
    from rise_llm.errors import RiseError
    from rise_llm.pipeline import load_run_config, share_base_evaluation

    recipe = Path(__file__).resolve().parents[1] / "configs" / "arith-toy-quick.yaml"

    def run_config(name: str, *overrides: str):
        return load_run_config(recipe, [f"out={tmp_path / name}", *overrides])

    source = run_config("a")
    (source.root / "base" / "eval").mkdir(parents=True)
    share_base_evaluation(source, run_config("b"))
    assert not (tmp_path / "b").exists()  # nothing finished yet: nothing to share
    (source.root / "base" / "eval" / "metrics.json").write_text("{}")
    share_base_evaluation(source, run_config("c", "collect.verifier=strict", "iterations=3"))
    assert (tmp_path / "c" / "base" / "eval" / "metrics.json").read_text() == "{}"
    with pytest.raises(RiseError, match="other settings"):
        share_base_evaluation(source, run_config("d", "evaluate.limit=11"))
    with pytest.raises(RiseError, match="other settings"):
        share_base_evaluation(source, run_config("e", "task_options.seed=3"))
    with pytest.raises(RiseError, match="same base model"):
        share_base_evaluation(source, run_config("f", "base_model=elsewhere"))
    with pytest.raises(RiseError, match="recipes must be some of reference, levers"):
        DemoConfig(recipes=["reference", "strict"])
