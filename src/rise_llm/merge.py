"""`rise merge`: join the shards of a sharded collection into one collection.

`rise collect --shard I/N` collects part I of N of the problems (positions I, I+N, I+2N, ...),
each shard in its own out folder, on as many processes or hosts as there are shards. `rise
merge` joins the shard folders into one folder, in the unsharded problem order, that reads like
an unsharded collection. It refuses shards that are missing, given twice, unfinished,
overlapping or collected with different settings, so the merged set has every problem exactly
once. `rise build-data` runs the same checks when it is given shard folders directly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rise_llm.collect import EPISODES, WHOLE, parse_shard, shard_problems
from rise_llm.errors import RiseError
from rise_llm.progress import console
from rise_llm.provenance import check_out, read_run_config, write_run_record
from rise_llm.records import CollectedEpisode, read_jsonl, read_stage_outputs, write_jsonl

MERGE_RECORD = "merge.json"


@dataclass
class ShardFolder:
    """One shard's collection: its folder, I and N, its other settings, and its episodes."""

    path: Path
    index: int
    count: int
    settings: dict[str, Any]
    episodes: list[CollectedEpisode]

    @property
    def spec(self) -> str:
        return f"{self.index}/{self.count}"


def _paths(source: str | Path) -> tuple[Path, Path]:
    """(folder, episodes file) of a collection folder or of an episodes file in one."""
    path = Path(source)
    return (path, path / EPISODES) if path.is_dir() else (path.parent, path)


def _recorded_shard(source: str | Path) -> str:
    """The shard a collection folder was collected as (0/1 when unsharded or unrecorded)."""
    settings = read_run_config(_paths(source)[0]) or {}
    return settings.get("shard", WHOLE)


def read_shard(source: str | Path) -> ShardFolder:
    """A collection folder (or its episodes file) with its shard; an unsharded one is 0/1."""
    folder, path = _paths(source)
    settings = read_run_config(folder)
    if settings is None or not path.exists():
        raise RiseError(
            f"{folder} is not a `rise collect` folder (it needs config.json and {EPISODES})"
        )
    settings = dict(settings)
    index, count = parse_shard(settings.pop("shard", WHOLE))
    return ShardFolder(folder, index, count, settings, read_jsonl(path, CollectedEpisode))


def _problem_ids(settings: dict[str, Any]) -> list[str]:
    """The ids of the unsharded collection's problems, in the order `rise collect` lists them."""
    from rise_llm.tasks import get_task

    task = get_task(settings["task"], **settings.get("task_options", {}))
    return [p.id for p in task.problems(settings["split"], settings["limit"])]


def join(shards: Sequence[ShardFolder]) -> list[CollectedEpisode]:
    """The episodes of all shards of one collection, each problem once, in the unsharded order.

    Raises a RiseError naming the folder when a shard is missing, given twice, unfinished, holds
    a problem that is not its own, or was collected with other settings than the rest.
    """
    first = shards[0]
    for shard in shards[1:]:
        if shard.count != first.count:
            raise RiseError(
                f"{shard.path} is shard {shard.spec} but {first.path} is {first.spec}; "
                "give the shards of one collection"
            )
        differ = sorted(
            k
            for k in shard.settings.keys() | first.settings.keys()
            if shard.settings.get(k) != first.settings.get(k)
        )
        if differ:
            raise RiseError(
                f"{shard.path} and {first.path} are shards of different collections "
                f"(settings differ: {', '.join(differ)})"
            )
    seen: dict[int, Path] = {}
    for shard in shards:
        if shard.index in seen:
            raise RiseError(
                f"shard {shard.spec} is given twice ({seen[shard.index]} and {shard.path})"
            )
        seen[shard.index] = shard.path
    missing = [i for i in range(first.count) if i not in seen]
    if missing:
        raise RiseError(
            f"shard {missing[0]}/{first.count} is missing ({len(seen)} of {first.count} given); "
            f"add the out folder of `rise collect --shard {missing[0]}/{first.count}`"
        )
    order = _problem_ids(first.settings)
    position = {pid: k for k, pid in enumerate(order)}
    owner: dict[str, Path] = {}
    for shard in shards:
        mine = set(shard_problems(order, shard.spec))
        for ep in shard.episodes:
            if ep.problem_id in owner:
                where = owner[ep.problem_id]
                raise RiseError(
                    f"problem {ep.problem_id!r} appears twice in {where}"
                    if where == shard.path
                    else f"problem {ep.problem_id!r} is in {where} and in {shard.path}"
                )
            if ep.problem_id not in mine:
                raise RiseError(
                    f"{shard.path} (shard {shard.spec}) holds problem {ep.problem_id!r}, which "
                    "is not one of its problems; was it collected with other settings?"
                )
            owner[ep.problem_id] = shard.path
        have = len(mine & {ep.problem_id for ep in shard.episodes})
        if have < len(mine):
            raise RiseError(
                f"{shard.path} (shard {shard.spec}) has {have} of its {len(mine)} problems; "
                "rerun its `rise collect` command to finish it"
            )
    episodes = [ep for shard in shards for ep in shard.episodes]
    return sorted(episodes, key=lambda ep: position[ep.problem_id])


def read_collections(sources: Sequence[str]) -> list[CollectedEpisode]:
    """Episodes of several collection folders (or episodes files), concatenated in order.

    The shards of a sharded collection must all be given, finished and disjoint (`join`); each
    sharded collection is taken in its unsharded order, where its first shard stands.
    """
    parts: list[list[CollectedEpisode] | str] = []  # episodes, or the key of a shard group
    groups: dict[str, list[ShardFolder]] = {}
    for source in sources:
        if _recorded_shard(source) == WHOLE:
            parts.append(
                read_stage_outputs([source], EPISODES, CollectedEpisode, "run `rise collect` first")
            )
            continue
        shard = read_shard(source)
        key = json.dumps([shard.count, shard.settings], sort_keys=True)
        if key not in groups:
            parts.append(key)
        groups.setdefault(key, []).append(shard)
    episodes: list[CollectedEpisode] = []
    for part in parts:
        episodes.extend(join(groups[part]) if isinstance(part, str) else part)
    return episodes


@dataclass
class MergeConfig:
    """Settings of `rise merge`.

    Args:
        shards: the out folders of `rise collect --shard I/N` for I = 0 .. N-1, in any order.
        out: the merged collection folder (episodes.jsonl, config.json), which `rise
            build-data` and `rise collect` read like an unsharded collection.
    """

    shards: list[str]
    out: str

    def __post_init__(self) -> None:
        if not self.shards:
            raise RiseError("merge: give the out folders of the shards to merge")


def run(config: MergeConfig) -> list[CollectedEpisode]:
    """Join the shard folders into `config.out`; returns the merged episodes."""
    check_out(config.out, "merge")
    shards = [read_shard(source) for source in config.shards]
    episodes = join(shards)
    out = Path(config.out)
    if any(out.resolve() == shard.path.resolve() for shard in shards):
        raise RiseError(f"merge: out {out} is one of the shards; choose a new folder")
    # the settings of the unsharded collection, so the folder reads (and resumes) as one
    write_run_record(out, shards[0].settings)
    write_jsonl(out / EPISODES, episodes)
    record = {"shards": [str(s.path) for s in sorted(shards, key=lambda s: s.index)]}
    (out / MERGE_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    console.print(
        f"merge: {len(episodes)} problems from {len(shards)} shards written to {out / EPISODES}"
    )
    return episodes
