"""The `rise` command line: a thin shell over the stage functions.

Each subcommand builds the stage's config dataclass from its flags and calls the same function a
Python user would (`toy_model.build`, `evaluate.run`). Bad input ends in one line on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from rise_llm import __version__
from rise_llm.errors import RiseError


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are a single line (no usage block)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def _whole_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    return value


def _task_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.replace("-", "_"), yaml.safe_load(value)


def _add_task_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task-option",
        dest="task_options",
        type=_task_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a task option, e.g. max_steps=5 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rise", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"rise-llm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    toy = sub.add_parser("toy-model", help="build the embedded default model (a small Llama)")
    toy.add_argument("--out", required=True, help="folder to write the model to")
    toy.add_argument("--steps", type=_whole_number, default=None, help="SFT steps")
    toy.add_argument("--layers", type=_whole_number, default=None)
    toy.add_argument("--hidden", type=_whole_number, default=None)
    toy.add_argument("--heads", type=_whole_number, default=None)
    toy.add_argument("--batch-size", type=_whole_number, default=None)
    toy.add_argument("--lr", type=float, default=None)
    toy.add_argument("--eval-problems", type=_whole_number, default=None)
    toy.add_argument("--seed", type=_whole_number, default=None)
    _add_task_options(toy)

    ev = sub.add_parser("evaluate", help="multi-turn evaluation with and without oracle")
    ev.add_argument("--model", required=True, help="a model folder or Hugging Face Hub id")
    ev.add_argument("--task", default="arith")
    ev.add_argument("--split", default="test")
    ev.add_argument("--limit", type=_whole_number, default=None, help="first N problems")
    ev.add_argument("--turns", type=_whole_number, default=5, help="K turns (default 5)")
    ev.add_argument(
        "--context-window", type=_whole_number, default=None, help="W (default min(2, K))"
    )
    ev.add_argument("--seed", type=_whole_number, default=0)
    ev.add_argument("--temperature", type=float, default=1.0)
    ev.add_argument("--top-p", type=float, default=1.0)
    ev.add_argument("--max-new-tokens", type=_whole_number, default=None)
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    ev.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    ev.add_argument("--batch-size", type=_whole_number, default=256)
    ev.add_argument(
        "--out", default=None, help="output folder (default runs/eval/MODEL-TASK-SPLIT)"
    )
    _add_task_options(ev)
    return parser


def _given(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _toy_model(args: argparse.Namespace) -> None:
    from rise_llm.toy_model import ToyModelConfig, build

    names = ("steps", "layers", "hidden", "heads", "batch_size", "lr", "eval_problems", "seed")
    build(ToyModelConfig(out=args.out, task_options=dict(args.task_options), **_given(args, names)))


def _evaluate(args: argparse.Namespace) -> None:
    from rise_llm.evaluate import EvaluateConfig, evaluate_and_print

    out = args.out or str(
        Path("runs") / "eval" / f"{Path(args.model).name}-{args.task}-{args.split}"
    )
    config = EvaluateConfig(
        model=args.model,
        task=args.task,
        task_options=dict(args.task_options),
        split=args.split,
        limit=args.limit,
        turns=args.turns,
        context_window=args.context_window,
        seed=args.seed,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        out=out,
    )
    evaluate_and_print(config)


COMMANDS = {"toy-model": _toy_model, "evaluate": _evaluate}


def _quiet_libraries() -> None:
    """Keep the libraries' own progress bars and advice out of our output."""
    import huggingface_hub
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.logging.set_verbosity_error()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _quiet_libraries()
        COMMANDS[args.command](args)
    except RiseError as e:
        sys.stderr.write(f"rise {args.command}: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(
            f"rise {args.command}: interrupted; run the same command again to resume\n"
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
