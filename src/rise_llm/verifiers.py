"""Verifiers of users' own tasks: a built-in one by name, or the user's own function.

A verifier is a plain callable `verify(problem, response)`:

- `problem` is a `rise_llm.records.Problem`: `question`, `answer` (the record's answer as text),
  `id`, and `meta`, the whole JSON record (so extra fields such as test cases reach it);
- `response` is the model's full reply (text);
- it returns a reward, 1 correct, 0 wrong, -1 no final answer (METHOD.md; True/False count as
  1/0), or a `Verdict(answer, reward)`. With a bare reward, the answer used for majority votes
  is the content of the response's last `\\boxed{}` (none when the reward is -1). Return a
  Verdict to give a canonical answer yourself, so that equal answers vote together, or
  feedback for the next attempt (`Verdict(answer, reward, feedback="...")`, shown where the
  retry template has `{feedback}`; only what the model may see at test time, README "Feedback
  between attempts").

The `verifier` task option names it as one of:

- `math` (default): math-verify equivalence of the last `\\boxed{}` (`math_equivalence.py`);
- `number`: the last `\\boxed{}` read as a number, as GSM8K (`answers.number_verdict`);
- `module.path:function`: a function of an importable module (the current folder is searched
  too, as `python -m` does);
- `path/to/file.py:function`: a function of a Python file;
- `NAME`: an installed entry point of group `rise_llm.verifiers`, e.g. in a package's
  pyproject.toml: `[project.entry-points."rise_llm.verifiers"] mine = "my_pkg.check:verify"`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rise_llm.answers import canonical_number, last_boxed, number_verdict, read_number
from rise_llm.errors import RiseError
from rise_llm.math_equivalence import math_verdict
from rise_llm.records import Problem, Verdict

ENTRY_POINT_GROUP = "rise_llm.verifiers"

Verifier = Callable[[Problem, str], Any]


def verify_math(problem: Problem, response: str) -> Verdict:
    """The `math` verifier: math-verify equivalence with the problem's answer."""
    return math_verdict(problem.answer, response)


def verify_number(problem: Problem, response: str) -> Verdict:
    """The `number` verifier: the boxed number equals the problem's numeric answer."""
    truth = read_number(problem.answer)
    if truth is None:
        raise RiseError(
            f"problem {problem.id}: answer {problem.answer!r} is not a number; "
            "the `number` verifier needs numeric answers (use verifier=math for others)"
        )
    return number_verdict(canonical_number(truth), response)


BUILTIN: dict[str, Verifier] = {"math": verify_math, "number": verify_number}


def _module_from_file(path: Path, spec: str):
    if not path.is_file():
        raise RiseError(f"verifier {spec!r}: file {path} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"rise_verifier_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise RiseError(f"verifier {spec!r}: {path} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _import_module(name: str, spec: str):
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:  # as `python -m` does, so a module beside the user's data imports
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and name.startswith(e.name):
            raise RiseError(
                f"verifier {spec!r}: no module named {e.name!r}; install it, run from its "
                "folder, or give a file as path/to/file.py:function"
            ) from None
        raise
    finally:
        if added:
            sys.path.remove(cwd)


def _from_module(spec: str) -> Verifier:
    location, _, function = spec.rpartition(":")
    if not location or not function:
        raise RiseError(f"verifier {spec!r}: expected module:function or file.py:function")
    try:
        if location.endswith(".py") or "/" in location or os.sep in location:
            module = _module_from_file(Path(location).expanduser(), spec)
        else:
            module = _import_module(location, spec)
    except RiseError:
        raise
    except Exception as e:  # the user's module failed while importing: say which and why
        raise RiseError(
            f"verifier {spec!r}: importing {location} failed ({type(e).__name__}: {e})"
        ) from None
    if not hasattr(module, function):
        defined = sorted(
            n
            for n, v in vars(module).items()
            if inspect.isfunction(v) and v.__module__ == module.__name__ and n[0] != "_"
        )
        raise RiseError(
            f"verifier {spec!r}: {location} has no function {function!r}; "
            f"it defines: {', '.join(defined) or 'no functions'}"
        )
    found = getattr(module, function)
    if not callable(found):
        raise RiseError(f"verifier {spec!r}: {function} is a {type(found).__name__}, not callable")
    return found


def _from_entry_point(name: str) -> Verifier:
    points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    for point in points:
        if point.name == name:
            try:
                return point.load()
            except Exception as e:  # a broken installed package
                raise RiseError(
                    f"verifier {name!r}: entry point {point.value} failed to load "
                    f"({type(e).__name__}: {e})"
                ) from None
    available = sorted({*BUILTIN, *(p.name for p in points)})
    raise RiseError(
        f"unknown verifier {name!r}; give module:function, path/to/file.py:function, or one of: "
        f"{', '.join(available)} (entry points of group {ENTRY_POINT_GROUP})"
    )


def load_verifier(spec: str) -> Verifier:
    """The verifier a `verifier` option names (see the module docstring for the forms)."""
    if not isinstance(spec, str) or not spec.strip():
        raise RiseError(f"verifier must be a name or module:function, got {spec!r}")
    spec = spec.strip()
    if spec in BUILTIN:
        return BUILTIN[spec]
    if ":" in spec:
        return _from_module(spec)
    return _from_entry_point(spec)


def as_verdict(result: Any, response: str, spec: str, problem: Problem) -> Verdict:
    """A verifier's return value as a Verdict; an error naming the verifier if it is not one."""
    feedback = None
    if isinstance(result, Verdict):
        reward, answer, feedback = result.reward, result.answer, result.feedback
    else:
        reward, answer = result, None
        if isinstance(reward, bool | int) and reward in (0, 1):
            boxed = last_boxed(response)
            answer = " ".join(boxed.split()) if boxed is not None else None
    if isinstance(reward, bool):
        reward = int(reward)
    if not isinstance(reward, int) or reward not in (-1, 0, 1):
        raise RiseError(
            f"verifier {spec!r} returned {result!r} for problem {problem.id}; "
            "return 1 (correct), 0 (wrong), -1 (no answer) or a Verdict"
        )
    if feedback is not None and not isinstance(feedback, str):
        raise RiseError(
            f"verifier {spec!r} gave feedback {feedback!r} for problem {problem.id}; "
            "feedback must be text or None"
        )
    return Verdict(answer=None if reward == -1 else answer, reward=reward, feedback=feedback)


def call_verifier(function: Verifier, spec: str, problem: Problem, response: str) -> Verdict:
    """`function(problem, response)` read as a Verdict (`as_verdict`). An exception from it is a
    bug in the user's verifier: it becomes one line naming the verifier, the problem and the
    exception, with the user's own line where it was raised, and none of ours."""
    try:
        result = function(problem, response)
    except RiseError:
        raise
    except Exception as e:
        message = (str(e).strip().splitlines() or [""])[0]
        raise RiseError(
            f"verifier {spec!r} raised {type(e).__name__}"
            f"{': ' + message if message else ''} on problem {problem.id}"
            f"{_user_frame(e, function)}; fix the verifier and rerun the same command"
        ) from None
    return as_verdict(result, response, spec, problem)


def _user_frame(error: BaseException, function: Verifier) -> str:
    """Where the verifier raised, as " (at FILE:LINE in NAME)": the deepest frame of `error`
    in the verifier's own file (the verifier's first frame when its file is unknown)."""
    frames = traceback.extract_tb(error.__traceback__)[1:]  # [0] is call_verifier's call
    code = getattr(function, "__code__", None)
    own = [f for f in frames if code is not None and f.filename == code.co_filename]
    if not own and not frames:
        return ""
    frame = own[-1] if own else frames[0]
    return f" (at {frame.filename}:{frame.lineno} in {frame.name})"


def stage_verifier(task: Any, spec: str | None) -> Callable[[Problem, str], Verdict]:
    """The verdict function of a stage that may judge with another verifier than the task's.

    None is the task's own `verify`. Otherwise `spec` is a verifier the task offers by name
    (its `verifiers` mapping, e.g. arith's `strict`) or any form `load_verifier` reads, whose
    return value is read as by `as_verdict`. Collection can so weight and choose responses with
    a stricter check (a process checker) while evaluation keeps the task's plain one.
    """
    if spec is None:
        return task.verify
    own = getattr(task, "verifiers", {})
    if spec in own:
        return own[spec]
    try:
        function = load_verifier(spec)
    except RiseError as e:
        offered = f"; task {task.name!r} offers: {', '.join(own)}" if own else ""
        raise RiseError(f"{e}{offered}") from None

    def verify(problem: Problem, response: str) -> Verdict:
        return call_verifier(function, spec, problem, response)

    return verify
