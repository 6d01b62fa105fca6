"""The benchmark scripts (benchmarks/, BENCHMARKS.md) run at a tiny size and write their JSON.

These check that the scripts keep working as the code changes, never how fast anything is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_benchmark(script: str, out: Path, *args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(BENCHMARKS / script), "--out", str(out), "--threads", "1"]
    proc = subprocess.run([*command, *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["benchmark"] == script.removesuffix(".py")
    assert {"cpu", "cores", "torch", "torch_threads"} <= set(record["machine"])
    return record


def test_rollout_compares_collection_with_one_call_per_sample(tiny_model_dir, tmp_path):
    record = run_benchmark(
        "rollout.py",
        tmp_path / "rollout.json",
        *("--model", str(tiny_model_dir), "--batch-sizes", "2,4", "--problems", "4"),
        *("--reference-problems", "2", "--samples", "2", "--max-new-tokens", "8"),
    )
    assert set(record["ours"]) == {"2", "4"}
    assert record["reference"]["problems"] == 2 and record["ours"]["4"]["problems"] == 4
    for r in [record["reference"], *record["ours"].values()]:
        # T=2: one turn-1 sample, at most 2 turn-2 samples, each 1 to 8 new tokens
        assert r["problems"] <= r["generated_tokens"] <= r["problems"] * (1 + 2) * 8
    for r in record["ours"].values():
        ratio = r["tokens_per_s"] / record["reference"]["tokens_per_s"]
        assert r["tokens_ratio"] == round(ratio, 1)
    assert record["settings"]["temperature"] == 1.0


def test_decoding_step_splits_collection_into_stages(tiny_model_dir, tmp_path):
    record = run_benchmark(
        "decoding_step.py",
        tmp_path / "decoding_step.json",
        *("--model", str(tiny_model_dir), "--batch-sizes", "2,4", "--problems", "3"),
        *("--profile-problems", "2", "--samples", "2", "--max-new-tokens", "8"),
    )
    assert set(record["batches"]) == {"2", "4"}
    for r in record["batches"].values():
        stages = r["stage_seconds"]
        assert r["decoding_steps"] > 0 and r["generated_tokens"] > 0
        assert {"model: attention", "prefill (prompts, once each)", "detokenise"} <= set(stages)
        # exclusive times: together they are at most the wall time of the timed collection
        assert sum(stages.values()) <= r["seconds_with_timers"] + 0.01
        assert r["stage_calls"]["episode logic (prompts, verifier, records)"] == 1
        assert r["ops_self_share"] and set(r["ops_calls"]) == set(r["ops_self_share"])


def test_stage_clock_charges_each_moment_to_the_innermost_stage(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from decoding_step import StageClock

    ticks = iter(range(100))
    clock = StageClock(now=lambda: float(next(ticks)))
    hidden = clock.wrap("hidden", lambda: None)  # inside an absorbing stage: not a stage
    absorbing = clock.wrap("absorbing", lambda: hidden(), absorbs=True)
    inner = clock.wrap("inner", lambda: None)

    def outer_body():
        inner()  # ticks 1, 2
        absorbing()  # ticks 3, 4
        inner()  # ticks 5, 6

    clock.wrap("outer", outer_body)()  # ticks 0 and 7
    assert dict(clock.seconds) == {"outer": 4.0, "inner": 2.0, "absorbing": 1.0}
    assert dict(clock.calls) == {"outer": 1, "inner": 2, "absorbing": 1}
    assert clock.stack == [] and not clock.absorbing


def test_machine_reads_the_other_results_for_mfu(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "training.json").write_text(
        json.dumps(
            {
                "parameters": 1000,
                "precisions": {
                    "float32": {
                        "rise_train": {"tokens_per_s": 10.0},
                        "raw_loop": {"tokens_per_s": 20.0},
                    },
                    "bf16": {
                        "rise_train": {"tokens_per_s": 30.0},
                        "raw_loop": {"tokens_per_s": 40.0},
                    },
                },
            }
        )
    )
    record = run_benchmark(
        "machine.py",
        tmp_path / "machine.json",
        "--size",
        "64",
        "--reps",
        "2",
        "--results",
        str(results),
    )
    peak = record["matmul"]["all_threads"]["best_gflops"]
    assert peak > 0 and record["matmul"]["one_thread"]["best_gflops"] > 0
    raw = record["mfu"]["training float32, raw loop"]
    assert raw["gflops"] == pytest.approx(6 * 1000 * 20 / 1e9, rel=1e-3)
    assert record["mfu"]["training bf16, rise train"]["gflops"] == pytest.approx(
        6 * 1000 * 30 / 1e9, rel=1e-3
    )
    assert raw["peak_gflops"] > 0  # the peak at the thread count of the result
    assert raw["mfu"] == pytest.approx(raw["gflops"] / raw["peak_gflops"], rel=1e-2)
    assert not any(k.startswith("generation") for k in record["mfu"])  # no rollout.json


@pytest.mark.slow
def test_training_measures_overhead_and_padding(tiny_model_dir, tmp_path):
    record = run_benchmark(
        "training.py",
        tmp_path / "training.json",
        *("--model", str(tiny_model_dir), "--collect-problems", "6", "--epochs", "1"),
        *("--batch-size", "4"),
    )
    padding = record["padding"]
    assert set(padding) == {"grouped", "random", "trained_batches"}
    # every epoch holds the same real tokens however it is batched
    assert padding["grouped"]["real_tokens"] == padding["random"]["real_tokens"]
    assert padding["trained_batches"]["real_tokens"] == record["real_tokens"]
    assert record["steps"] == padding["grouped"]["batches"]
    assert set(record["precisions"]) == {"float32", "bf16"}
    for timed in record["precisions"].values():
        assert timed["rise_train"]["seconds"] > 0 and timed["raw_loop"]["seconds"] > 0
        assert timed["overhead"] == pytest.approx(
            timed["rise_train"]["seconds"] / timed["raw_loop"]["seconds"] - 1, abs=1e-3
        )
    assert record["precisions"]["float32"]["speedup_over_first"] == 1.0


@pytest.mark.slow
def test_scaling_runs_each_size_in_its_own_process(tiny_model_dir, tmp_path):
    record = run_benchmark(
        "scaling.py",
        tmp_path / "scaling.json",
        *("--model", str(tiny_model_dir), "--sizes", "2,4", "--samples", "2"),
        *("--chunk-size", "2"),
    )
    sizes = record["sizes"]
    assert [r["problems"] for r in sizes] == [2, 4]
    assert [r["size_ratio"] for r in sizes] == [1.0, 2.0]
    assert all(r["peak_rss_mib"] > 0 and r["seconds"] > 0 for r in sizes)


@pytest.mark.slow
def test_end_to_end_times_every_stage_of_a_run(tiny_model_dir, tmp_path):
    quick = BENCHMARKS.parent / "configs" / "arith-toy-quick.yaml"
    record = run_benchmark(
        "end_to_end.py",
        tmp_path / "e2e.json",
        *("--execute", "--config", str(quick), "--model", str(tiny_model_dir)),
        *("--run-dir", str(tmp_path / "run")),
    )
    names = [s["stage"] for s in record["stages"]]
    assert names[0] == "base: evaluate" and names[-1] == "summary, comparisons, plot"
    for k in (1, 2):
        assert [f"iter{k}: {s}" for s in ("collect", "build data", "train", "evaluate")] == [
            n for n in names if n.startswith(f"iter{k}")
        ]
    assert record["uninterrupted"]
    assert record["run_seconds"] == pytest.approx(sum(s["seconds"] for s in record["stages"]))
    assert record["run_seconds"] <= record["wall_seconds_measured"] + 1
    assert record["toy_build_seconds"] > 0


def test_evaluation_compares_reused_samples_with_every_mode_sampled(tiny_model_dir, tmp_path):
    record = run_benchmark(
        "evaluation.py",
        tmp_path / "evaluation.json",
        *("--model", str(tiny_model_dir), "--problems", "4", "--turns", "2"),
    )
    assert record["samples"]["reused"] == 4 * (2 + 1)  # K no-oracle turns, K-1 extra samples
    assert record["samples"]["every_mode"] >= 4 * (2 + 1 + 2)  # + oracle turn 1, K parallel
    assert set(record["metrics"]) == {"acc@1", "m1@t2", "p1@t2", "m2@t1", "p2@t1"}
    for m in record["metrics"].values():
        estimate, low, high = m["difference"]
        assert low <= estimate <= high
        assert estimate == pytest.approx(m["reused"] - m["every_mode"])


def test_training_step_times_and_profiles_each_variant(tmp_path):
    record = run_benchmark(
        "training_step.py",
        tmp_path / "training_step.json",
        *("--variants", "float32", "bf16 no mask", "--steps", "1", "--batch-size", "2"),
        *("--profile-steps", "1"),
    )
    variants = record["variants"]
    assert list(variants) == ["float32", "bf16 no mask"]
    assert all(v["real_tokens_per_s"] > 0 and v["warmup_seconds"] > 0 for v in variants.values())
    assert variants["float32"]["speed_vs_first"] == 1.0
    shares = variants["float32"]["profile_self_share"]  # profiled: float32, bf16 with sdpa
    assert "aten::mm" in shares and 0 < sum(shares.values()) <= 1
    assert "profile_self_share" not in variants["bf16 no mask"]


def test_serve_load_answers_every_request_of_concurrent_clients(tiny_model_dir, tmp_path):
    record = run_benchmark(
        "serve_load.py",
        tmp_path / "serve_load.json",
        *("--model", str(tiny_model_dir), "--clients", "4", "--seconds", "3"),
    )
    assert record["errors"] == 0 and record["errors_by_kind"] == {}
    assert record["answered"] == record["requests"] >= 4  # at least one request per client
    assert record["requests_per_s"] > 0 and record["completion_tokens_per_s"] > 0
    assert 0 < record["latency_p50_s"] <= record["latency_p99_s"] <= record["latency_max_s"]
    assert record["settings"] == {
        "clients": 4,
        "seconds": 3.0,
        "max_tokens": 16,
        "timeout": 300.0,
        "host": "127.0.0.1",
        "model": str(tiny_model_dir),
    }


@pytest.mark.parametrize("first_turn", [False, True])
def test_batch_invariance_counts_no_flip_on_the_tiny_model(tiny_model_dir, tmp_path, first_turn):
    record = run_benchmark(
        "batch_invariance.py",
        tmp_path / "batch_invariance.json",
        *("--model", str(tiny_model_dir), "--problems", "6", "--samples", "2"),
        *("--max-new-tokens", "12", *(["--first-turn"] if first_turn else [])),
    )
    results = record["against_batch_512"]
    assert len(results) == 2 and record["settings"]["first_turn"] == first_turn
    for counts in results.values():
        assert counts["compared"] == counts["samples"] > 0 and counts["tokens"] > 0
        assert 0 <= counts["flips"] <= counts["samples"]
    # twelve rows fit one batch of 64 as of 512: the same batch, so the same samples (the
    # other comparison changes the rows beside each sample, where float32 may flip a draw)
    assert results["batch 64"]["flips"] == results["batch 64"]["flipped_tokens"] == 0
    for cost in record["draw_cost"].values():
        assert cost["multinomial_us_per_step"] > 0 and cost["row_streams_us_per_step"] > 0


def test_report_measures_size_and_load_time(tmp_path):
    import shutil

    browser = shutil.which("chromium") and shutil.which("chromedriver")
    record = run_benchmark(
        "report.py",
        tmp_path / "report.json",
        *("--problems", "4", "--tokens", "20,200", "--loads", "1"),
        *(() if browser else ("--no-browser",)),
    )
    small, large = record["files"]["4x3xK5, 20 tokens"], record["files"]["4x3xK5, 200 tokens"]
    assert small["problems"] == 4 and small["models"] == 3 and small["turns"] == 5
    assert 0 < small["report_mb"] < large["report_mb"]
    if browser:
        assert 0 < small["load_s"] <= small["ready_s"] and small["open_episode_s"] > 0


def test_code_checks_judge_humaneval_responses_in_the_sandbox(tmp_path, needs_sandbox):
    record = run_benchmark(
        "code_checks.py",
        tmp_path / "code_checks.json",
        *("--problems", "3", "--repeat", "1", "--workers", "1,2"),
    )
    for workers in (1, 2):
        result = record["results"][f"workers {workers}"]
        # 3 reference solutions pass, their 3 broken copies fail, whatever the pool size
        assert (result["responses"], result["passed"]) == (6, 3)
        assert result["checks_per_s"] > 0


def test_sandbox_counts_executions_per_second(tmp_path):
    record = run_benchmark(
        "sandbox.py", tmp_path / "sandbox.json", "--programs", "4", "--concurrency", "1,2"
    )
    ways = {"unsandboxed", "bare python"} | ({"bwrap"} if record["bwrap"] else set())
    assert set(record["results"]) == {f"{w}, concurrency {c}" for w in ways for c in (1, 2)}
    for result in record["results"].values():
        assert result["ok"] == result["programs"] == 4 and result["executions_per_s"] > 0


def test_gpu_check_runs_tiny_on_the_cpu(tmp_path):
    """The H200 check (issue 18) end to end at its tiny size on the CPU: no GPU needed."""
    record = run_benchmark("gpu_check.py", tmp_path / "gpu_check.json", "--tiny", "--device", "cpu")
    assert record["device"] == "cpu" and record["tiny"] and record["bandwidth_gbs"] is None
    assert len(record["checks"]) == 3 and all(record["checks"].values())
    assert set(record["training"]) == {"toy", "toy x10"}
    small, large = record["training"]["toy"], record["training"]["toy x10"]
    assert large["parameters"] > small["parameters"]
    for r in (small, large):
        # 2 warm-up + 4 timed steps at lr 1e-3 from random weights: the loss (~ln 101) falls
        assert len(r["losses"]) == 6 and r["finite"] and r["decreased"]
        assert r["losses"][-1] < r["losses"][0] and r["real_tokens_per_s"] > 0
        assert r["peak_memory_mib"] is None  # CUDA only
    attention = record["attention"]
    # each bf16 path's error against float32 is a few bf16 rounding steps of the logits; the
    # shared path may be at most twice as far off as sdpa (the script's docstring)
    assert attention["within_tolerance"]
    assert attention["max_logit_error_shared_vs_float32"] <= 0.02 * attention["logit_scale"]
    assert 0.5 <= attention["greedy_tokens_identical"] <= 1
    assert set(record["generation"]) == {"4", "8"}
    for b, r in record["generation"].items():
        assert r["rows"] == int(b) and r["all_ran_to_length"]
        assert r["generated_tokens"] == int(b) * r["new_tokens"] and r["tokens_per_s"] > 0
        assert r["share_of_bound"] is None  # no bandwidth given on the CPU
