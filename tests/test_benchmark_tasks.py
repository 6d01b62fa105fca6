"""The gsm8k and math tasks: loading from local files or the Hub, splits, errors, the CLI.

Nothing here downloads: local sources are ../shared/data (the `shared_data` fixture) and small
files written in tmp_path; the Hub code path (`datasets.load_dataset`) is exercised on local
files, and with the Hub forced offline for its error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import assert_metrics_match_episodes

from rise_llm.cli import main
from rise_llm.errors import RiseError
from rise_llm.records import Episode, read_jsonl
from rise_llm.tasks import get_task
from rise_llm.tasks.gsm8k import GSM8KTask
from rise_llm.tasks.loading import load_records, read_hub
from rise_llm.tasks.math import MathTask


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def lines(path: Path, n: int) -> list[dict]:
    with open(path) as f:
        return [json.loads(next(f)) for _ in range(n)]


@pytest.fixture
def offline_hub(monkeypatch):
    """Make any Hub access fail at once, as on a machine without network."""
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_gsm8k_splits_from_the_shared_folder(shared_data) -> None:
    task = get_task("gsm8k", data=str(shared_data / "gsm8k"))
    train, test = task.problems("train"), task.problems("test")
    assert (len(train), len(test)) == (7473, 1319)
    assert len({p.id for p in train + test}) == 7473 + 1319
    assert {p.question for p in train}.isdisjoint({p.question for p in test})
    first = lines(shared_data / "gsm8k" / "test.jsonl", 1)[0]
    assert test[0].question == first["question"] and test[0].meta["solution"] == first["answer"]
    assert task.problems("test", 5) == test[:5]


def test_one_file_serves_any_split_with_the_same_ids(shared_data) -> None:
    folder = GSM8KTask(data=str(shared_data / "gsm8k")).problems("test", 20)
    file = GSM8KTask(data=str(shared_data / "gsm8k" / "test.jsonl")).problems("train", 20)
    assert file == folder  # ids come from the question, not from the source or position


def test_math_splits_and_the_derived_training_pool(shared_data) -> None:
    task = get_task("math", data=str(shared_data / "math"))
    test, test500, train = task.problems("test"), task.problems("test500"), task.problems("train")
    assert (len(test), len(test500), len(train)) == (5000, 500, 4500)
    questions = {p.question for p in test}
    held_out = {p.question for p in test500}
    assert held_out <= questions  # MATH500 is a subset of the test split
    assert {p.question for p in train} == questions - held_out
    assert len({p.id for p in test}) == 5000
    by_question = {p.question: p for p in test}
    assert all(by_question[p.question].answer == p.answer for p in test500)


def test_math_uses_a_train_file_when_the_folder_has_one(tmp_path, shared_data) -> None:
    records = lines(shared_data / "math" / "test.jsonl", 6)
    write_jsonl(tmp_path / "train.jsonl", records[:2])
    write_jsonl(tmp_path / "test.jsonl", records[2:])
    task = MathTask(data=str(tmp_path), math500=str(shared_data / "math" / "test500.jsonl"))
    assert [p.question for p in task.problems("train")] == [r["problem"] for r in records[:2]]
    assert len(task.problems("test500")) == 500  # from the math500 file, not the Hub


def test_parquet_folder_reads_like_jsonl(tmp_path, shared_data) -> None:
    records = lines(shared_data / "gsm8k" / "test.jsonl", 20)
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "test.parquet")
    from_parquet = GSM8KTask(data=str(tmp_path)).problems("test")
    from_jsonl = GSM8KTask(data=str(shared_data / "gsm8k")).problems("test", 20)
    assert from_parquet == from_jsonl


def test_hub_path_reads_through_datasets(tmp_path, monkeypatch, shared_data) -> None:
    """`data=openai/gsm8k` goes to datasets.load_dataset(id, "main", split=...); here the call is
    answered from the local file by the real load_dataset (json builder), so no download."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    real = datasets.load_dataset
    calls = []

    def local_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        source = shared_data / "gsm8k" / f"{split}.jsonl"
        return real("json", data_files={split: str(source)}, split=split, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", local_load_dataset)
    problems = GSM8KTask().problems("test", 10)
    assert calls == [("openai/gsm8k", "main", "test")]
    assert problems == GSM8KTask(data=str(shared_data / "gsm8k")).problems("test", 10)


def test_read_hub_on_a_local_dataset_folder(tmp_path, monkeypatch, shared_data) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    records = lines(shared_data / "math" / "test500.jsonl", 3)
    write_jsonl(tmp_path / "hub" / "test.jsonl", records)
    rows = read_hub(str(tmp_path / "hub"), "test")
    assert [r.data["problem"] for r in rows] == [r["problem"] for r in records]
    assert rows[1].where.endswith("[test] row 1")


def test_unreachable_hub_is_one_clear_error(offline_hub) -> None:
    with pytest.raises(RiseError, match=r"could not load split 'test' of 'openai/gsm8k'.*data="):
        GSM8KTask().problems("test")


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"answer": "#### 3"}, r"test.jsonl:2: missing field 'question'"),
        ({"question": "Q?"}, r"test.jsonl:2: missing field 'answer'"),
        ({"question": "Q?", "answer": "It is 3."}, r"test.jsonl:2: .*'answer'.*'#### <number>'"),
        ({"question": ["Q?"], "answer": "#### 3"}, r"test.jsonl:2: field 'question' must be text"),
    ],
)
def test_gsm8k_record_errors_name_file_line_and_field(tmp_path, record, message) -> None:
    write_jsonl(tmp_path / "test.jsonl", [{"question": "Fine?", "answer": "#### 1"}, record])
    with pytest.raises(RiseError, match=message):
        GSM8KTask(data=str(tmp_path)).problems("test")


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"solution": r"\boxed{1}"}, r"test.jsonl:1: missing field 'problem'"),
        ({"problem": "P?"}, r"test.jsonl:1: missing field 'solution'"),
        ({"problem": "P?", "solution": "It is 1."}, r"test.jsonl:1: .*no \\boxed\{\} final"),
    ],
)
def test_math_record_errors_name_file_line_and_field(tmp_path, record, message) -> None:
    write_jsonl(tmp_path / "test.jsonl", [record])
    with pytest.raises(RiseError, match=message):
        MathTask(data=str(tmp_path)).problems("test")


def test_math_record_with_an_answer_field_needs_no_box(tmp_path) -> None:
    write_jsonl(tmp_path / "test.jsonl", [{"problem": "P?", "solution": "It is 1.", "answer": 1}])
    (problem,) = MathTask(data=str(tmp_path)).problems("test")
    assert problem.answer == "1"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda d: (d / "test.jsonl").write_text('{"question": "Q?"\n'),
            r"test.jsonl:1: not valid",
        ),
        (lambda d: (d / "test.jsonl").write_text("[1, 2]\n"), r"test.jsonl:1: expected a JSON obj"),
        (lambda d: (d / "train.jsonl").write_text(""), r"has no test.jsonl.*holds: train.jsonl"),
        (lambda d: (d / "test.parquet").write_text("not parquet"), r"not a readable Parquet"),
    ],
)
def test_broken_sources_are_one_line_errors(tmp_path, make, message) -> None:
    make(tmp_path)
    with pytest.raises(RiseError, match=message):
        GSM8KTask(data=str(tmp_path)).problems("test")


def test_a_missing_path_is_not_sent_to_the_hub(offline_hub) -> None:
    with pytest.raises(RiseError, match=r"data path './nowhere/gsm8k' does not exist"):
        GSM8KTask(data="./nowhere/gsm8k").problems("test")
    with pytest.raises(RiseError, match=r"unsupported file type"):
        load_records(__file__, "test")


def test_repeated_question_is_an_error_naming_both_lines(tmp_path) -> None:
    same = {"question": "Q?", "answer": "#### 1"}
    write_jsonl(tmp_path / "test.jsonl", [same, {"question": "R?", "answer": "#### 2"}, same])
    with pytest.raises(RiseError, match=r"test.jsonl:3: problem id .* repeats .*test.jsonl:1"):
        GSM8KTask(data=str(tmp_path)).problems("test")


@pytest.mark.parametrize(("task", "split"), [("gsm8k", "test500"), ("math", "dev")])
def test_unknown_split_names_the_known_ones(task, split, shared_data) -> None:
    with pytest.raises(RiseError, match=rf"unknown split '{split}'.*test"):
        get_task(task, data=str(shared_data / task)).problems(split)


@pytest.mark.parametrize(("task", "split"), [("gsm8k", "test"), ("math", "test500")])
def test_evaluate_on_local_benchmark_files_through_the_command_line(
    task, split, tiny_model_dir, shared_data, tmp_path, capsys
) -> None:
    out = tmp_path / "eval"
    argv = ["evaluate", "--task", task, "--task-option", f"data={shared_data / task}"]
    argv += ["--task-option", "prompt=zero-shot", "--split", split, "--model", str(tiny_model_dir)]
    argv += ["--limit", "3", "--turns", "2", "--max-new-tokens", "8", "--device", "cpu"]
    argv += ["--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    episodes = read_jsonl(out / "episodes.jsonl", Episode)
    assert metrics["n"] == 3
    assert_metrics_match_episodes(metrics, episodes, 2)
    problems = get_task(task, data=str(shared_data / task)).problems(split, 3)
    assert {e.problem_id for e in episodes} == {p.id for p in problems}
    first = next(e for e in episodes if e.mode == "no_oracle")
    problem = next(p for p in problems if p.id == first.problem_id)
    assert first.turns[0].messages[-1]["content"].endswith(problem.question)
    assert first.turns[1].messages[-1]["content"].startswith("The answer is incorrect.")
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["task_options"] == {"data": str(shared_data / task), "prompt": "zero-shot"}
