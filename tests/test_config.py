"""Typed configuration: YAML loading, `key=value` overrides, validation into dataclasses, and the
run config (every shipped config must load).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rise_llm.config import apply_overrides, build, load_yaml
from rise_llm.errors import RiseError
from rise_llm.pipeline import RunConfig, load_run_config
from rise_llm.tasks import get_task

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_yaml_reads_a_mapping(tmp_path):
    path = write(tmp_path, "a: 1\nb:\n  c: [x, y]\n")
    assert load_yaml(path) == {"a": 1, "b": {"c": ["x", "y"]}}
    assert load_yaml(write(tmp_path, "", "empty.yaml")) == {}


def test_load_yaml_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(RiseError, match="does not exist") as info:
        load_yaml(missing)
    assert str(missing) in str(info.value)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a: 1\nb: 2\n  c: 3\n", 3),  # mapping values are not allowed here
        ("a: 1\n\tb: 2\n", 2),  # a tab cannot start a token
    ],
)
def test_load_yaml_invalid_gives_file_and_line(tmp_path, text, line):
    path = write(tmp_path, text)
    with pytest.raises(RiseError, match="invalid YAML") as info:
        load_yaml(path)
    assert str(info.value).startswith(f"{path}:{line}:")


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just a string\n", "42\n"])
def test_load_yaml_top_level_must_be_a_mapping(tmp_path, text):
    with pytest.raises(RiseError, match="expected a mapping of settings at the top level"):
        load_yaml(write(tmp_path, text))


def test_apply_overrides_sets_nested_typed_values_on_a_copy():
    data = {"train": {"lr": 1e-5, "epochs": 1}, "iterations": 2}
    new = apply_overrides(
        data, ["train.lr=1.0e-4", "train.lora=true", "iterations=3", "train.report_to=[a, b]"]
    )
    assert new == {
        "train": {"lr": 1e-4, "epochs": 1, "lora": True, "report_to": ["a", "b"]},
        "iterations": 3,
    }
    assert isinstance(new["train"]["lr"], float)
    assert data == {"train": {"lr": 1e-5, "epochs": 1}, "iterations": 2}  # untouched


def test_apply_overrides_exponent_without_dot_is_a_number():
    assert apply_overrides({}, ["train.lr=1e-4"]) == {"train": {"lr": 1e-4}}


def test_apply_overrides_creates_sections_and_keeps_strings():
    new = apply_overrides({}, ["collect.task_options.max_steps=5", "out=runs/x", "a.b=null"])
    assert new == {"collect": {"task_options": {"max_steps": 5}}, "out": "runs/x", "a": {"b": None}}
    assert apply_overrides({}, ["base_model=a=b"]) == {"base_model": "a=b"}  # first = splits


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("train.lr", "expected KEY=VALUE"),
        ("=3", "expected KEY=VALUE"),
        ("iterations.x=1", "iterations is not a section"),
    ],
)
def test_apply_overrides_bad_syntax(item, message):
    with pytest.raises(RiseError, match=message):
        apply_overrides({"iterations": 2}, [item])


def test_apply_overrides_invalid_yaml_value_is_a_rise_error():
    with pytest.raises(RiseError, match=r"train\.report_to"):
        apply_overrides({}, ["train.report_to=[a, b"])


@dataclass
class Small:
    name: str
    max_new_tokens: int = 8
    rate: float = 0.5
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise RiseError(f"small: max_new_tokens must be at least 1, got {self.max_new_tokens}")


def test_build_validates_and_converts():
    assert build(Small, {"name": "x", "rate": 1, "tags": ["a"]}, "f.yaml") == Small(
        name="x", rate=1.0, tags=["a"]
    )


@pytest.mark.parametrize(
    ("data", "flags", "message"),
    [
        ({"name": "x", "bogus": 1}, False, "f.yaml.bogus: unknown setting; known: max_new_tokens"),
        ({"name": "x", "max_new_tokens": "many"}, False, "f.yaml.max_new_tokens: Input should"),
        ({"name": "x", "max_new_tokens": "many"}, True, "--max-new-tokens: Input should"),
        ({"name": "x", "tags": [1]}, False, "f.yaml.tags.0: Input should be a valid string"),
        ({}, False, "f.yaml.name: required setting is missing"),
        ({}, True, "--name: required setting is missing"),
        ({"name": "x", "max_new_tokens": 0}, False, "small: max_new_tokens must be at least 1"),
        ([1, 2], False, "f.yaml: expected a mapping of settings, got list"),
    ],
)
def test_build_errors_name_the_field(data, flags, message):
    with pytest.raises(RiseError) as info:
        build(Small, data, "f.yaml", flags=flags)
    assert str(info.value).startswith(message)


VALID = """\
base_model: ./toy
out: runs/test
iterations: 1
collect:
  samples: 4
  limit: 100
data:
  criteria: better
train:
  lr: 1.0e-4
  epochs: 2
evaluate:
  turns: 3
  limit: 50
"""


def test_load_run_config_with_sections(tmp_path):
    cfg = load_run_config(write(tmp_path, VALID))
    assert isinstance(cfg, RunConfig)
    assert (cfg.base_model, cfg.iterations, cfg.task) == ("./toy", 1, "arith")
    assert cfg.collect == {"samples": 4, "limit": 100}
    collect = cfg.collect_config(1)
    assert (collect.samples, collect.limit, collect.model, collect.turns) == (4, 100, "./toy", 2)
    assert collect.out == str(Path("runs/test") / "iter1" / "collect")
    assert cfg.data_config(1).criteria == "better"
    assert (cfg.train_config(1).lr, cfg.train_config(1).epochs) == (1e-4, 2.0)
    assert (cfg.evaluate_config(0).turns, cfg.evaluate_config(0).limit) == (3, 50)


def test_load_run_config_overrides_win(tmp_path):
    path = write(tmp_path, VALID)
    cfg = load_run_config(path, ["train.lr=0.001", "iterations=3", "collect.samples=8"])
    assert cfg.iterations == 3
    assert cfg.train_config(1).lr == 0.001
    assert load_run_config(path, ["train.lr=1e-3"]).train_config(1).lr == 0.001  # typed field
    assert cfg.collect_config(1).samples == 8
    assert cfg.collect_config(1).limit == 100  # the rest of the section stays


BASE = "base_model: ./toy\nout: runs/test\n"


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("collect:\n  samples: 0\n", ["collect", "samples"]),
        ("collect:\n  samples: many\n", ["collect.samples", "valid integer"]),
        ("train:\n  lr: -1\n", ["train", "lr must be positive"]),
        ("evaluate:\n  turns: 0\n", ["turns must be at least 1"]),
        ("bogus: 1\n", ["c.yaml.bogus", "unknown setting"]),
        ("train:\n  bogus: 1\n", ["train.bogus", "unknown setting"]),
        ("collect:\n  model: other\n", ["collect.model", "set by the run itself"]),
        ("evaluate:\n  out: elsewhere\n", ["evaluate.out", "set by the run itself"]),
        ("iterations: 0\n", ["iterations must be at least 1"]),
        ("start_from: scratch\n", ["start_from", "scratch"]),
        ("evaluate:\n  turns: 0\n", ["evaluate", "turns"]),
        ("data:\n  criteria: nope\n", ["data", "criteria", "nope"]),
        ("data:\n  tau: 0\n", ["data", "tau"]),
        ("task: nope\n", ["unknown task 'nope'", "arith"]),
        ("train:\n  chat_template: t.jinja\n", ["train.chat_template", "set by the run"]),
        ("evaluate:\n  chat_template: t.jinja\n", ["evaluate.chat_template", "set by the run"]),
        ("train:\n  scheduler: cosin\n", ["train", "unknown scheduler 'cosin'"]),
    ],
)
def test_load_run_config_bad_values_name_the_field(tmp_path, extra, words):
    with pytest.raises(RiseError) as info:
        load_run_config(write(tmp_path, BASE + extra))
    for word in words:
        assert word in str(info.value)


def test_the_run_chat_template_reaches_every_stage(tmp_path):
    cfg = load_run_config(write(tmp_path, VALID + "chat_template: t.jinja\n"))
    assert cfg.collect_config(1).chat_template == "t.jinja"
    assert cfg.train_config(1).chat_template == "t.jinja"
    assert cfg.evaluate_config(1).chat_template == "t.jinja"


SHIPPED = sorted(p for p in CONFIGS.rglob("*") if p.is_file())


def test_every_shipped_file_is_a_run_config_or_a_launch_config():
    """Run configs at the top; DeepSpeed and accelerate configs (test_distributed.py) below."""
    assert SHIPPED, f"nothing in {CONFIGS}"
    for path in SHIPPED:
        relative = path.relative_to(CONFIGS).as_posix()
        run_config = path.suffix == ".yaml" and path.parent == CONFIGS
        assert run_config or relative.startswith(("deepspeed/", "accelerate/")), relative


@pytest.mark.parametrize(
    "path",
    [p for p in SHIPPED if p.suffix == ".yaml" and p.parent == CONFIGS],
    ids=lambda p: p.name,
)
def test_shipped_run_config_loads_and_validates(path):
    first = path.read_text().splitlines()[0]
    assert first == f"# rise run configs/{path.name}", "each config starts with its command"
    cfg = load_run_config(path)
    assert cfg.base_model and cfg.out, path
    get_task(cfg.task, **cfg.task_options)  # the task and its options exist
    for k in range(1, cfg.iterations + 1):
        cfg.data_config(k)  # the only section not built at load
        train = cfg.train_config(k)
        if train.deepspeed:  # shipped references point at shipped files
            assert (CONFIGS.parent / train.deepspeed).is_file(), train.deepspeed


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.suffix == ".json"], ids=lambda p: p.name)
def test_shipped_deepspeed_configs_parse(path):
    settings = json.loads(path.read_text())
    assert settings["zero_optimization"]["stage"] in (1, 2, 3)
    # "auto" lets the Trainer fill in the batch, accumulation and precision of TrainConfig
    assert settings["train_micro_batch_size_per_gpu"] == "auto"
    assert settings["gradient_accumulation_steps"] == "auto"
