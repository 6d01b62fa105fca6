"""Code-task problems shared by the code tests: real HumanEval and MBPP records in their
datasets' formats, and responses to HumanEval/0 (right, wrong, overfit to the docstring, a loop,
a crash)."""

from __future__ import annotations

import json
from pathlib import Path

# Two real HumanEval records: a doctest docstring (HumanEval/0) and the `f(x) ➞ y` form (72).
HUMANEVAL_0 = {
    "task_id": "HumanEval/0",
    "prompt": "from typing import List\n\n\ndef has_close_elements(numbers: List[float], "
    'threshold: float) -> bool:\n    """ Check if in given list of numbers, are any two '
    "numbers closer to each other than\n    given threshold.\n    >>> has_close_elements([1.0,"
    " 2.0, 3.0], 0.5)\n    False\n    >>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], "
    '0.3)\n    True\n    """\n',
    "entry_point": "has_close_elements",
    "canonical_solution": "    for idx, elem in enumerate(numbers):\n        for idx2, elem2 in "
    "enumerate(numbers):\n            if idx != idx2:\n                distance = abs(elem - "
    "elem2)\n                if distance < threshold:\n                    return True\n\n"
    "    return False\n",
    "test": "\n\nMETADATA = {\n    'author': 'jt',\n    'dataset': 'test'\n}\n\n\ndef check("
    "candidate):\n    assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True\n    "
    "assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.05) == False\n    assert candidate("
    "[1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True\n    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0],"
    " 0.8) == False\n    assert candidate([1.0, 2.0, 3.0, 4.0, 5.0, 2.0], 0.1) == True\n    "
    "assert candidate([1.1, 2.2, 3.1, 4.1, 5.1], 1.0) == True\n    assert candidate([1.1, 2.2,"
    " 3.1, 4.1, 5.1], 0.5) == False\n\n",
}
HUMANEVAL_72 = {
    "task_id": "HumanEval/72",
    "prompt": "\ndef will_it_fly(q,w):\n    '''\n    Write a function that returns True if the "
    "object q will fly, and False otherwise.\n    The object q will fly if it's balanced (it is"
    " a palindromic list) and the sum of its elements is less than or equal the maximum "
    "possible weight w.\n\n    Example:\n    will_it_fly([1, 2], 5) ➞ False \n    # 1+2 is less"
    " than the maximum possible weight, but it's unbalanced.\n\n    will_it_fly([3, 2, 3], 1) ➞"
    " False\n    # it's balanced, but 3+2+3 is more than the maximum possible weight.\n\n    "
    "will_it_fly([3, 2, 3], 9) ➞ True\n    # 3+2+3 is less than the maximum possible weight, "
    "and it's balanced.\n\n    will_it_fly([3], 5) ➞ True\n    # 3 is less than the maximum "
    "possible weight, and it's balanced.\n    '''\n",
    "entry_point": "will_it_fly",
    "canonical_solution": "    if sum(q) > w:\n        return False\n\n    i, j = 0, len(q)-1\n"
    "    while i<j:\n        if q[i] != q[j]:\n            return False\n        i+=1\n        "
    "j-=1\n    return True\n",
    "test": "def check(candidate):\n\n    # Check some simple cases\n    assert candidate([3, "
    "2, 3], 9) is True\n    assert candidate([1, 2], 5) is False\n    assert candidate([3], 5) "
    "is True\n    assert candidate([3, 2, 3], 1) is False\n\n\n    # Check some edge cases "
    "that are easy to work out by hand.\n    assert candidate([1, 2, 3], 6) is False\n    "
    "assert candidate([5], 5) is True\n\n",
}

# MBPP records in the Hub's format (google-research-datasets/mbpp, config full).
MBPP_RECORDS = [
    {
        "task_id": 11,
        "text": "Write a python function to remove first and last occurrence of a given "
        "character from the string.",
        "code": "def remove_Occ(s,ch): \r\n    for i in range(len(s)): \r\n        if (s[i] == ch):"
        " \r\n            s = s[0 : i] + s[i + 1:] \r\n            break\r\n    for i in range("
        "len(s) - 1,-1,-1):  \r\n        if (s[i] == ch): \r\n            s = s[0 : i] + s[i + "
        "1:] \r\n            break\r\n    return s ",
        "test_list": [
            'assert remove_Occ("hello","l") == "heo"',
            'assert remove_Occ("abcda","a") == "bcd"',
            'assert remove_Occ("PHP","P") == "H"',
        ],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 3,
        "text": "Write a python function to identify non-prime numbers.",
        "code": "import math\r\ndef is_not_prime(n):\r\n    result = False\r\n    for i in range("
        "2,int(math.sqrt(n)) + 1):\r\n        if n % i == 0:\r\n            result = True\r\n"
        "    return result",
        "test_list": [
            "assert is_not_prime(2) == False",
            "assert is_not_prime(10) == True",
            "assert is_not_prime(35) == True",
        ],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 2,
        "text": "Write a function to find the similar elements from the given two tuple lists.",
        "code": "def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & "
        "set(test_tup2))\r\n  return (res) ",
        "test_list": [
            "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
            "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)",
            "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)",
        ],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
]

CLOSE_OK = """Here it is.
```python
from typing import List

def has_close_elements(numbers: List[float], threshold: float) -> bool:
    return any(abs(a - b) < threshold
               for i, a in enumerate(numbers) for j, b in enumerate(numbers) if i != j)
```
"""
# wrong everywhere: "closer than" read as "at least as far as"
CLOSE_WRONG = """```python
def has_close_elements(numbers, threshold):
    return any(abs(a - b) >= threshold for a in numbers for b in numbers)
```"""
# passes the two docstring examples, fails the hidden tests
CLOSE_OVERFIT = """```python
def has_close_elements(numbers, threshold):
    return numbers == [1.0, 2.8, 3.0, 4.0, 5.0, 2.0]
```"""
CLOSE_LOOP = """```python
def has_close_elements(numbers, threshold):
    while True:
        pass
```"""
CLOSE_CRASH = """```python
def has_close_elements(numbers, threshold):
    raise ValueError("x" * 5000)
```"""


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
