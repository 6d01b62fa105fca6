"""The `rise` command line: a thin shell over the stage functions.

Each stage subcommand's flags are generated from the stage's config dataclass (one flag per
field, help from its docstring), validated by `config.build` exactly like a YAML config, and
passed to the same `run` function a Python user calls. Bad input ends in one line on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import re
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from rise_llm import __version__
from rise_llm.config import parse_value
from rise_llm.errors import RiseError


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are a single line (no usage block)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.replace("-", "_"), parse_value(value, key)


def _field_help(cls: type) -> dict[str, str]:
    """Each field's own entry in the "Args:" section of the class docstring (Google style,
    one field per entry), continuation lines included, escaped for argparse (which reads `%`
    as a format directive)."""
    helps: dict[str, str] = {}
    doc = cls.__doc__ or ""
    for match in re.finditer(r"^ {8}(\w+):\s+(.+(?:\n {12}.+)*)$", doc, flags=re.M):
        text = " ".join(line.strip() for line in match.group(2).splitlines()).replace("%", "%%")
        helps[match.group(1)] = text
    return helps


def add_config_flags(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """One flag per field of dataclass `cls`; only flags given end up in the namespace."""
    hints = typing.get_type_hints(cls)
    helps = _field_help(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        flag = "--" + f.name.replace("_", "-")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = (
            None
            if required
            else (f.default if f.default is not dataclasses.MISSING else f.default_factory())
        )
        text = helps.get(f.name, "")
        if not required:
            text = f"{text} (default: {default})".strip()
        hint = hints[f.name]
        origin = typing.get_origin(hint)
        common = {"dest": f.name, "help": text, "default": argparse.SUPPRESS}
        if hint is dict[str, Any] or origin is dict:
            singular = flag.removesuffix("s")
            parser.add_argument(
                singular, type=_key_value, action="append", metavar="KEY=VALUE", **common
            )
        elif hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        elif origin in (list, tuple):
            parser.add_argument(flag, nargs="+", type=_yaml_scalar, required=required, **common)
        elif hint is str or hint == str | None:  # text as given: a template is not YAML
            parser.add_argument(flag, required=required, **common)
        else:
            parser.add_argument(flag, type=_yaml_scalar, required=required, **common)


def _yaml_scalar(text: str) -> Any:
    try:
        return parse_value(text)
    except RiseError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def config_from_flags(cls: type, args: argparse.Namespace, command: str, **extra: Any):
    from rise_llm.config import build

    given = {k: v for k, v in vars(args).items() if k not in ("command", "handler")}
    for k, v in list(given.items()):
        if isinstance(v, list) and v and isinstance(v[0], tuple):  # KEY=VALUE pairs
            given[k] = dict(v)
    return build(cls, {**extra, **given}, f"rise {command}", flags=True)


UNSANDBOXED = "allow_unsandboxed_code"
UNSANDBOXED_HELP = (
    "run model-written code (the code tasks' tests) without the bubblewrap sandbox where bwrap "
    "is missing, with resource limits but no isolation; the task option "
    f"{UNSANDBOXED}: true in a config (README 'Running model-written code')"
)


def _code_tasks_option(args: argparse.Namespace) -> None:
    """`--allow-unsandboxed-code` as the task option of that name, for the tasks that run code."""
    from rise_llm.errors import RiseError
    from rise_llm.tasks import TASKS

    if not vars(args).pop(UNSANDBOXED, False):
        return
    task = getattr(args, "task", "arith")
    factory = TASKS.get(task)
    if factory is not None and UNSANDBOXED not in getattr(factory, "__dataclass_fields__", {}):
        raise RiseError(f"--allow-unsandboxed-code: task {task!r} runs no model-written code")
    args.task_options = [*(getattr(args, "task_options", None) or []), (UNSANDBOXED, True)]


def _toy_model(args: argparse.Namespace) -> None:
    from rise_llm.toy_model import ToyModelConfig, build

    build(config_from_flags(ToyModelConfig, args, "toy-model"))


def _evaluate(args: argparse.Namespace) -> None:
    from rise_llm.evaluate import EvaluateConfig, evaluate_and_print

    if "out" not in args:
        model, task = Path(args.model).name, getattr(args, "task", "arith")
        args.out = str(Path("runs") / "eval" / f"{model}-{task}-{getattr(args, 'split', 'test')}")
    _code_tasks_option(args)
    evaluate_and_print(config_from_flags(EvaluateConfig, args, "evaluate"))


def _collect(args: argparse.Namespace) -> None:
    from rise_llm.collect import CollectConfig, run

    _code_tasks_option(args)
    run(config_from_flags(CollectConfig, args, "collect"))


def _merge(args: argparse.Namespace) -> None:
    from rise_llm.merge import MergeConfig, run

    run(config_from_flags(MergeConfig, args, "merge"))


def _build_data(args: argparse.Namespace) -> None:
    from rise_llm.data import BuildDataConfig, build

    build(config_from_flags(BuildDataConfig, args, "build-data"))


def _train(args: argparse.Namespace) -> None:
    from rise_llm.train import TrainConfig, run

    path = run(config_from_flags(TrainConfig, args, "train"))
    print(f"trained model: {path}")
    _leave_process_group()


def _leave_process_group() -> None:
    """End a process of `accelerate launch` at once after its training succeeded (its model and
    train.json written), without tearing its gloo process group down. Both ways of tearing it
    down race gloo's worker threads, which need the GIL to free the last collective's tensors:
    left to the interpreter's exit, a rank can abort (SIGABRT, "terminate called without an
    active exception", pytorch/pytorch#190489); destroyed explicitly, the group's destructor
    can join that thread while holding the GIL, a deadlock (both seen in fresh-clone CI runs).
    What exit would still do is done first: wandb's run finished, logs and streams flushed."""
    import logging

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _run(args: argparse.Namespace) -> None:
    from rise_llm.pipeline import load_run_config, run

    overrides = list(args.set or [])
    if args.out:
        overrides.append(f"out={args.out}")
    if args.allow_unsandboxed_code:
        overrides.append(f"task_options.{UNSANDBOXED}=true")
    run(load_run_config(args.config, overrides))


def _compare(args: argparse.Namespace) -> None:
    from rise_llm.compare import CompareConfig, compare

    compare(config_from_flags(CompareConfig, args, "compare"))


def _serve(args: argparse.Namespace) -> None:
    from rise_llm.serve import ServeConfig, run

    run(config_from_flags(ServeConfig, args, "serve"))


def _report(args: argparse.Namespace) -> None:
    from rise_llm.report_html import ReportConfig, run

    run(config_from_flags(ReportConfig, args, "report"))


def _demo(args: argparse.Namespace) -> None:
    from rise_llm.demo import DemoConfig, run

    run(config_from_flags(DemoConfig, args, "demo"))


def build_parser() -> argparse.ArgumentParser:
    from rise_llm.collect import CollectConfig
    from rise_llm.compare import CompareConfig
    from rise_llm.data import BuildDataConfig
    from rise_llm.demo import DemoConfig
    from rise_llm.evaluate import EvaluateConfig
    from rise_llm.merge import MergeConfig
    from rise_llm.report_html import ReportConfig
    from rise_llm.serve import ServeConfig
    from rise_llm.toy_model import ToyModelConfig
    from rise_llm.train import TrainConfig

    parser = _Parser(prog="rise", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"rise-llm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    stages: list[tuple[str, str, type, Callable]] = [
        ("demo", "the whole method on the embedded default (toy model, arith)", DemoConfig, _demo),
        (
            "toy-model",
            "build the embedded default model (a small Llama)",
            ToyModelConfig,
            _toy_model,
        ),
        ("evaluate", "multi-turn evaluation with and without oracle", EvaluateConfig, _evaluate),
        (
            "collect",
            "on-policy rollouts with best-of-N or teacher responses",
            CollectConfig,
            _collect,
        ),
        ("merge", "join the shards of a `collect --shard I/N` collection", MergeConfig, _merge),
        ("build-data", "weighted training examples from collections", BuildDataConfig, _build_data),
        ("train", "reward-weighted fine-tuning (full or LoRA)", TrainConfig, _train),
        (
            "compare",
            "models evaluated on the same problems against a base, with intervals",
            CompareConfig,
            _compare,
        ),
    ]
    for name, help_text, cls, handler in stages:
        p = sub.add_parser(name, help=help_text, description=(cls.__doc__ or "").split("\n")[0])
        add_config_flags(p, cls, skip=("out",) if name == "evaluate" else ())
        if name == "evaluate":
            p.add_argument(
                "--out",
                default=argparse.SUPPRESS,
                help="output folder (default runs/eval/MODEL-TASK-SPLIT)",
            )
        if name in ("evaluate", "collect"):
            p.add_argument("--allow-unsandboxed-code", action="store_true", help=UNSANDBOXED_HELP)
        p.set_defaults(handler=handler)
    run = sub.add_parser("run", help="RISE iterations from a YAML config")
    run.add_argument("config", help="YAML file (see configs/)")
    run.add_argument("--out", default=None, help="run folder (overrides the config's out)")
    run.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override, e.g. train.lr=1e-4"
    )
    run.add_argument("--allow-unsandboxed-code", action="store_true", help=UNSANDBOXED_HELP)
    run.set_defaults(handler=_run)
    serve = sub.add_parser(
        "serve",
        help="OpenAI-compatible server over a model (optionally RISE over turns)",
        description=(ServeConfig.__doc__ or "").split("\n")[0],
    )
    serve.add_argument("model", help="model folder or Hub id")
    add_config_flags(serve, ServeConfig, skip=("model",))
    serve.set_defaults(handler=_serve)
    report = sub.add_parser(
        "report",
        help="one self-contained HTML file: turn curves, claims, transitions, trajectories",
        description=(ReportConfig.__doc__ or "").split("\n")[0],
    )
    report.add_argument(
        "paths", nargs="+", help="a `rise run` folder, or `rise evaluate` folders to compare"
    )
    add_config_flags(report, ReportConfig, skip=("paths",))
    report.set_defaults(handler=_report)
    return parser


def _quiet_libraries() -> None:
    """Keep the libraries' own progress bars and advice out of our output."""
    import huggingface_hub
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.logging.set_verbosity_error()


_RERUN = "then rerun the same command to resume"
_ENVIRONMENT_ERRORS = {
    errno.ENOSPC: f"free some space or give another out folder, {_RERUN}",
    errno.EDQUOT: f"free some of your quota or give another out folder, {_RERUN}",
    errno.EROFS: "give an out folder on a writable file system",
    errno.EACCES: "give a path you may read (or an out folder you may write to)",
    errno.EPERM: "give a path you may read (or an out folder you may write to)",
}
"""Errors of the machine rather than of rise-llm (a full disk, a read-only folder): one line
naming the path and the fix, like bad input."""


def _error_line(command: str, message: str) -> None:
    """The error as one line on stderr, whatever line breaks the message holds."""
    sys.stderr.write(f"rise {command}: error: {' '.join(message.splitlines())}\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _quiet_libraries()
        args.handler(args)
    except RiseError as e:
        _error_line(args.command, str(e))
        return 2
    except OSError as e:
        if e.errno not in _ENVIRONMENT_ERRORS:
            raise
        fix = _ENVIRONMENT_ERRORS[e.errno]
        where = f"{e.filename}: " if e.filename else ""
        _error_line(args.command, f"{where}{e.strerror}; {fix}")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(
            f"rise {args.command}: interrupted; run the same command again to resume\n"
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
