"""`rise report`: one self-contained HTML file whose numbers are the episodes' own.

Hand-made evaluation folders (no model) check the page's figures against the library's metrics
and claims, the filters' counts against a count by hand from episodes.jsonl, and the packed
attempts against the episodes; a real tiny `rise run` checks the run's own sections (collection,
training data, loss curve, versions). The browser itself: test_report_browser.py.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import re
from pathlib import Path

import pytest
from conftest import expected_filter_counts

from rise_llm.claims import rise_claims
from rise_llm.cli import main
from rise_llm.metrics import compute_metrics
from rise_llm.records import CollectedEpisode, Episode, Turn, read_jsonl, write_jsonl
from rise_llm.trajectories import episode_tags

K = 4


def _turn(t: int, reward: int, answer: str | None, response: str) -> Turn:
    return Turn(
        index=t,
        messages=[{"role": "user", "content": "What is 2 + 2?"}],
        response=response,
        answer=answer,
        reward=reward,
    )


def _episodes(pid: str, rewards: list[int], answers: list[str | None]) -> list[Episode]:
    """The three modes of one problem: no oracle as given, the oracle episode its prefix up to
    the first right attempt, and K parallel samples (the no-oracle attempts again)."""
    turns = [
        _turn(t, r, a, f"step one\nstep {t}\nAnswer: \\boxed{{{a}}}")
        for t, (r, a) in enumerate(zip(rewards, answers, strict=True))
    ]
    turns[0].messages[0]["content"] = f"Question of {pid}: what is 2 + 2?"
    first_right = next((t for t, r in enumerate(rewards) if r == 1), len(rewards) - 1)
    return [
        Episode(pid, "no_oracle", turns),
        Episode(pid, "oracle", turns[: first_right + 1]),
        *(Episode(pid, "parallel", [turns[s]], sample=s) for s in range(len(turns))),
    ]


def _evaluation(folder: Path, seed: int, n: int = 40) -> list[Episode]:
    """An evaluation folder of `n` problems with random rewards and answers (seeded)."""
    rng = random.Random(seed)
    episodes = []
    for i in range(n):
        rewards = [rng.choice([1, 0, 0, -1]) for _ in range(K)]
        answers = [None if r == -1 else ("4" if r == 1 else rng.choice("357")) for r in rewards]
        episodes += _episodes(f"p{i:03d}", rewards, answers)
    folder.mkdir(parents=True)
    write_jsonl(folder / "episodes.jsonl", episodes)
    return episodes


TAGS = [
    # rewards, answers, tags
    ([1, 1, 1], ["4", "4", "4"], ["always"]),
    ([0, 1, 1], ["3", "4", "4"], ["fixed@2", "fixed"]),
    ([0, 0, 1], ["3", "5", "4"], ["fixed@3", "fixed"]),
    ([1, 0, 0], ["4", "3", "3"], ["broke", "stuck"]),
    ([0, 0, 0], ["3", "3", "5"], ["stuck", "never"]),
    ([0, 0, 0], ["3", "5", "3"], ["never"]),  # the same answer, but not at consecutive turns
    ([-1, -1, -1], [None, None, None], ["never"]),  # no answer is not stuck on one
    ([-1, 1, 0], [None, "4", "5"], ["fixed@2", "fixed", "broke"]),
]


@pytest.mark.parametrize(("rewards", "answers", "tags"), TAGS)
def test_episode_tags(rewards, answers, tags):
    turns = [_turn(t, r, a, "") for t, (r, a) in enumerate(zip(rewards, answers, strict=True))]
    assert episode_tags(turns) == tags


def _page(html: Path) -> tuple[str, dict]:
    text = html.read_text()
    found = re.search(
        r'<script id="report-data" type="application/json">(.*?)</script>', text, re.S
    )
    return text, json.loads(found.group(1))


def _blob(text: str, name: str):
    found = re.search(
        rf'<script id="blob-{name}" type="application/octet-stream">(.*?)</script>', text
    )
    return json.loads(gzip.decompress(base64.b64decode(found.group(1))))


def test_report_of_evaluations_holds_their_numbers(tmp_path, capsys):
    base = _evaluation(tmp_path / "base", seed=1)
    trained = _evaluation(tmp_path / "trained", seed=2)
    html = tmp_path / "out" / "compare.html"
    assert (
        main(["report", str(tmp_path / "base"), str(tmp_path / "trained"), "--out", str(html)]) == 0
    )
    assert str(html) in capsys.readouterr().out
    text, data = _page(html)
    # self-contained: no script, style or image is fetched from anywhere
    assert not re.search(r"<(script|link|img)[^>]*\s(src|href)=", text)
    assert "Plotly" in text

    assert [m["label"] for m in data["models"]] == ["base", "trained"]
    for section, episodes in zip(data["models"], (base, trained), strict=True):
        metrics = compute_metrics(episodes, K)
        assert [c["value"] for c in section["curve"]] == pytest.approx(metrics.acc)
        assert all(c["low"] <= c["value"] <= c["high"] for c in section["curve"])
        summary = {k: v["value"] for k, v in section["summary"].items()}
        assert summary == pytest.approx(
            {"m1@t4": metrics.majority, "p1@t4": metrics.oracle}
            | {"m4@t1": metrics.parallel_majority, "p4@t1": metrics.parallel_any}
        )
        for step in section["transitions"]:
            counts = metrics.transitions[step["step"]]
            assert step["unchanged"] == counts["wrong->wrong unchanged"]
            assert sum(step["counts"].values()) == metrics.n
    (entry,) = data["claims"]
    claims = rise_claims(base, trained, K)
    assert [c["estimate"] for c in entry["claims"]] == pytest.approx([c.estimate for c in claims])
    assert [c["holds"] for c in entry["claims"]] == [c.holds for c in claims]

    # the filters' counts, counted by hand from each episodes.jsonl
    for label in ("base", "trained"):
        tags = data["browser"]["models"][label]["tags"]
        expected = expected_filter_counts(tmp_path / label / "episodes.jsonl")
        assert expected["all"] == len(tags) == 40
        for key, count in expected.items():
            if key != "all":
                assert sum(key in t for t in tags) == count, key
        assert 0 < expected["fixed"] < 40 and 0 < expected["stuck"] < 40  # the data have some
    # the packed attempts are the episodes', with a line diff against the attempt before
    questions = _blob(text, "problems")
    entry = data["browser"]["models"]["trained"]
    attempts = _blob(text, entry["blob"])
    no_oracle = [ep for ep in trained if ep.mode == "no_oracle"]
    for i, ep in enumerate(no_oracle):
        assert data["browser"]["ids"][entry["problem"][i]] == ep.problem_id
        assert questions[entry["problem"][i]] == ep.turns[0].messages[-1]["content"]
        assert [a[:3] for a in attempts[i]] == [[t.response, t.answer, t.reward] for t in ep.turns]
        assert [a[4] for a in attempts[i]] == [t.feedback for t in ep.turns]
        assert attempts[i][0][3] == [] and attempts[i][1][3][0] == 0  # "step one" is kept


def test_report_refuses_what_it_cannot_read(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "neither a `rise run` folder" in capsys.readouterr().err
    _evaluation(tmp_path / "e", seed=0, n=3)
    assert main(["report", str(tmp_path / "e"), "--out", str(tmp_path / "r.txt")]) == 2
    assert "should end in .html" in capsys.readouterr().err


def test_claims_need_the_same_problems(tmp_path):
    from rise_llm.report_html import ReportConfig, write_report

    _evaluation(tmp_path / "a", seed=0, n=5)
    _evaluation(tmp_path / "b", seed=0, n=6)
    paths = [str(tmp_path / "a"), str(tmp_path / "b")]
    written = write_report(ReportConfig(paths=paths, out=str(tmp_path / "r.html")))
    assert written.data["claims"] == []
    assert written.data["claims_note"] == "no claims where b was evaluated on other problems than a"


@pytest.mark.slow
def test_run_report_holds_every_iteration(tiny_run):
    _, data = _page(tiny_run / "report.html")
    assert [m["label"] for m in data["models"]] == ["base", "iter1", "iter2"]
    summary = json.loads((tiny_run / "summary.json").read_text())
    for section in data["models"]:
        stored = summary[section["label"]]
        assert [c["value"] for c in section["curve"]] == pytest.approx(
            [stored[f"acc@{t}"] for t in range(1, 6)]
        )
    comparisons = json.loads((tiny_run / "comparisons.json").read_text())
    for entry in data["claims"]:
        stored = comparisons[f"{entry['label']}_vs_base"]
        assert [c["estimate"] for c in entry["claims"]] == [c["estimate"] for c in stored]
    for k, it in enumerate(data["iterations"], start=1):
        folder = tiny_run / f"iter{k}"
        collected = read_jsonl(folder / "collect" / "episodes.jsonl", CollectedEpisode)
        assert it["collection"]["problems"] == len(collected) == 12
        assert it["collection"]["samples"] == sum(
            len(t.attempts) for e in collected for t in e.turns
        )
        first = it["collection"]["rows"][0]
        assert (first["turn"], first["states"]) == (1, 12)
        lines = (folder / "data" / "data.jsonl").read_text().splitlines()
        assert it["data"]["examples"] == len(lines)
        shares = [s for s in it["data"]["weight_share"].values()]
        assert sum(shares) == pytest.approx(1)
        record = json.loads((folder / "train" / "train.json").read_text())
        logged = [[e["step"], e["loss"]] for e in record["log"] if "loss" in e]
        assert it["training"]["loss"] == logged and logged
    (provenance,) = data["provenance"]
    assert provenance["versions"]["torch"] and provenance["config"]["iterations"] == 2
    for label in ("base", "iter1", "iter2"):
        tags = data["browser"]["models"][label]["tags"]
        expected = expected_filter_counts(tiny_run / label / "eval" / "episodes.jsonl")
        assert len(tags) == expected["all"] == 10
        assert {k: sum(k in t for t in tags) for k in expected if k != "all"} == {
            k: v for k, v in expected.items() if k != "all"
        }


def test_the_page_escapes_what_it_shows(tmp_path):
    from rise_llm.report_html import ReportConfig, write_report

    _evaluation(tmp_path / "x<i>y", seed=0, n=3)
    written = write_report(
        ReportConfig(paths=[str(tmp_path / "x<i>y")], out=str(tmp_path / "r.html"))
    )
    text = written.path.read_text()
    assert '<option value="x&lt;i&gt;y">x&lt;i&gt;y</option>' in text
    assert "<th>x<i>y</th>" not in text and text.endswith("</html>\n")
