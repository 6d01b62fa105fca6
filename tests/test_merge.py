"""Sharded collection: the split into I/N parts, real shard collections, and their merge.

Three shards of a real (tiny-model) collection must merge into every problem exactly once, in
the unsharded order; a missing, repeated, unfinished, foreign or differently-set shard must be
refused with a message that names it, by `rise merge` and by `rise build-data` alike.
"""

from __future__ import annotations

import json
import shutil

import pytest

from rise_llm import collect, merge
from rise_llm.cli import main
from rise_llm.collect import CollectConfig, parse_shard, shard_problems
from rise_llm.data import BuildDataConfig, build
from rise_llm.errors import RiseError
from rise_llm.records import CollectedEpisode, read_jsonl, write_jsonl
from rise_llm.tasks.arith import ArithTask

LIMIT = 7  # shards of 3, 2 and 2 problems


@pytest.mark.parametrize(("spec", "expected"), [("0/1", (0, 1)), ("2/3", (2, 3)), ("0/8", (0, 8))])
def test_parse_shard(spec, expected):
    assert parse_shard(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("3/3", "shard 3/3 does not exist; the 3 shards are 0/3 to 2/3"),
        ("7/3", "shard 7/3 does not exist"),
        ("x", "shard must be I/N, part I of N counted from 0 (e.g. 0/4), got 'x'"),
        ("1/0", "shard must be I/N"),
        ("-1/3", "shard must be I/N"),
        ("1/", "shard must be I/N"),
        ("/3", "shard must be I/N"),
        ("1/3/5", "shard must be I/N"),
        ("", "shard must be I/N"),
    ],
)
def test_bad_shard_specs_are_refused(spec, message):
    with pytest.raises(RiseError, match=message.replace("(", r"\(").replace(")", r"\)")):
        CollectConfig(model="m", out="o", shard=spec)


@pytest.mark.parametrize(("spec", "message"), [("3/3", "does not exist"), ("x", "got 'x'")])
def test_bad_shard_on_the_command_line_is_one_line(spec, message, tmp_path, capsys):
    code = main(["collect", "--model", "m", "--out", str(tmp_path / "c"), "--shard", spec])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10])
def test_shards_partition_the_problems(n):
    problems = ArithTask().problems("train", LIMIT)
    parts = [shard_problems(problems, f"{i}/{n}") for i in range(n)]
    ids = [p.id for part in parts for p in part]
    assert sorted(ids) == sorted(p.id for p in problems)  # nothing lost
    assert len(ids) == len(set(ids))  # nothing twice
    assert max(map(len, parts)) - min(map(len, parts)) <= 1  # even
    assert [p.id for p in parts[0]] == [p.id for p in problems[::n]]  # deterministic


def _collect(tiny_engine, out, **kw):
    settings = dict(model="tiny", out=str(out), limit=LIMIT, samples=2) | {"chunk_size": 2, **kw}
    return collect.run(CollectConfig(**settings, max_new_tokens=16), learner=tiny_engine)


@pytest.fixture(scope="module")
def shards(tiny_engine, tmp_path_factory):
    """The three shard folders of one real collection."""
    root = tmp_path_factory.mktemp("shards")
    for i in range(3):
        _collect(tiny_engine, root / f"shard{i}", shard=f"{i}/3")
    return [root / f"shard{i}" for i in range(3)]


def test_shards_merge_into_every_problem_exactly_once(shards, tmp_path, tiny_engine):
    order = [p.id for p in ArithTask().problems("train", LIMIT)]
    stored = [read_jsonl(s / collect.EPISODES, CollectedEpisode) for s in shards]
    assert [len(s) for s in stored] == [3, 2, 2]
    assert [ep.problem_id for ep in stored[1]] == order[1::3]

    out = tmp_path / "merged"
    merged = merge.run(merge.MergeConfig(shards=[str(s) for s in reversed(shards)], out=str(out)))
    assert [ep.problem_id for ep in merged] == order  # every problem once, unsharded order
    assert read_jsonl(out / collect.EPISODES, CollectedEpisode) == merged
    by_id = {ep.problem_id: ep for part in stored for ep in part}
    assert merged == [by_id[pid] for pid in order]  # the shards' episodes, unchanged
    assert json.loads((out / merge.MERGE_RECORD).read_text())["shards"] == [str(s) for s in shards]

    # the merged folder is a finished unsharded collection: `rise collect` has nothing to do
    class Refusing:
        def generate(self, *args, **kwargs):
            raise AssertionError("a merged collection should not sample")

    assert _collect(Refusing(), out) == merged

    # build-data reads the shard folders as it reads the merged folder
    from_shards = build(BuildDataConfig(episodes=[str(s) for s in shards], out=str(tmp_path / "a")))
    from_merged = build(BuildDataConfig(episodes=[str(out)], out=str(tmp_path / "b")))
    assert from_shards == from_merged
    assert {ex.problem_id for ex in from_merged} == set(order)


def test_merged_shards_are_the_unsharded_collection(exact_engine, tmp_path):
    """Every problem samples from its own streams: three shards merged hold exactly the episodes
    of one unsharded run, whose chunks (of 2, or of 5 here) group the problems otherwise."""
    parts = [_collect(exact_engine, tmp_path / f"s{i}", shard=f"{i}/3") for i in range(3)]
    merged = _merge([tmp_path / f"s{i}" for i in range(3)], tmp_path)
    whole = _collect(exact_engine, tmp_path / "whole", chunk_size=5)
    assert merged == whole
    assert sorted(ep.problem_id for part in parts for ep in part) == sorted(
        ep.problem_id for ep in whole
    )


def test_a_collection_resumed_with_another_batch_size_draws_the_same(exact_engine, tmp_path):
    """Cut short after its first chunk, a collection resumed with engine batches of 3 (not 16)
    ends with the episodes of an uninterrupted run."""
    from rise_llm.engines.hf import HFEngine

    def run(out, batch_size):
        engine = HFEngine(exact_engine.model, exact_engine.tokenizer, batch_size=batch_size)
        return _collect(engine, out, batch_size=batch_size)

    whole = run(tmp_path / "whole", 16)
    path = tmp_path / "cut" / collect.EPISODES
    run(tmp_path / "cut", 16)
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:2]))
    assert run(tmp_path / "cut", 3) == whole


def test_a_shard_resumes_and_refuses_another_shard_spec(shards, tiny_engine):
    path = shards[0] / collect.EPISODES
    first = read_jsonl(path, CollectedEpisode)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[1] + lines[2][:10])  # killed while writing its 2nd chunk
    assert _collect(tiny_engine, shards[0], shard="0/3") == first
    with pytest.raises(RiseError, match=r"different settings \(shard\)"):
        _collect(tiny_engine, shards[0], shard="1/3")


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _merge(sources, tmp_path):
    return merge.run(merge.MergeConfig(shards=[str(s) for s in sources], out=str(tmp_path / "m")))


def test_missing_and_repeated_shards_are_refused(shards, tmp_path):
    with pytest.raises(RiseError, match=r"shard 2/3 is missing \(2 of 3 given\); add the out"):
        _merge(shards[:2], tmp_path)
    with pytest.raises(RiseError, match="shard 1/3 is missing"):
        build(BuildDataConfig(episodes=[str(shards[0]), str(shards[2])], out=str(tmp_path / "d")))
    twin = _copy(shards[1], tmp_path / "twin")
    with pytest.raises(RiseError, match=f"shard 1/3 is given twice \\({shards[1]} and {twin}\\)"):
        _merge([*shards, twin], tmp_path)


def test_unfinished_shard_is_refused(shards, tmp_path):
    cut = _copy(shards[0], tmp_path / "cut")
    lines = (cut / collect.EPISODES).read_text().splitlines(keepends=True)
    (cut / collect.EPISODES).write_text("".join(lines[:2]))
    with pytest.raises(RiseError, match=f"{cut} \\(shard 0/3\\) has 2 of its 3 problems; rerun"):
        _merge([cut, *shards[1:]], tmp_path)


def test_duplicated_and_foreign_problems_are_refused(shards, tmp_path):
    twice = _copy(shards[0], tmp_path / "twice")
    episodes = read_jsonl(twice / collect.EPISODES, CollectedEpisode)
    write_jsonl(twice / collect.EPISODES, [*episodes, episodes[0]])
    with pytest.raises(RiseError, match=f"'{episodes[0].problem_id}' appears twice in {twice}"):
        _merge([twice, *shards[1:]], tmp_path)

    foreign = _copy(shards[0], tmp_path / "foreign")
    other = read_jsonl(shards[1] / collect.EPISODES, CollectedEpisode)[0]
    write_jsonl(foreign / collect.EPISODES, [*episodes, other])
    with pytest.raises(RiseError, match=f"holds problem '{other.problem_id}', which is not one"):
        build(BuildDataConfig(episodes=[str(foreign), *map(str, shards[1:])], out=str(tmp_path)))


def test_shards_of_different_collections_are_refused(shards, tiny_engine, tmp_path):
    other = tmp_path / "other"
    _collect(tiny_engine, other, shard="2/3", seed=1)
    with pytest.raises(RiseError, match=r"are shards of different collections \(settings differ"):
        _merge([*shards[:2], other], tmp_path)
    halves = _copy(shards[0], tmp_path / "halves")
    record = json.loads((halves / "config.json").read_text())
    record["config"]["shard"] = "0/2"
    (halves / "config.json").write_text(json.dumps(record))
    with pytest.raises(RiseError, match="is shard 0/2 but"):
        _merge([*shards[1:], halves], tmp_path)
    with pytest.raises(RiseError, match="is not a `rise collect` folder"):
        _merge([tmp_path / "nothing"], tmp_path)
