"""Prompt formats: the exact messages of zero-shot and the reference one-shot format, the retry
message and system prompt options, and what the chat template makes of them."""

from __future__ import annotations

import pytest

from rise_llm.chat import render
from rise_llm.errors import RiseError
from rise_llm.records import Problem
from rise_llm.rollout import context
from rise_llm.tasks import get_task
from rise_llm.tasks.base import REFERENCE_RETRY, PromptFormat
from rise_llm.tasks.prompts import (
    DEMONSTRATION_PROBLEM,
    DEMONSTRATION_SOLUTION,
    REFERENCE_INSTRUCTION,
)
from rise_llm.toy_model import build_tokenizer

PROBLEM = Problem(id="p", question="What is $\\frac{1}{2} + 3$?", answer="\\frac{7}{2}")
RETRY = f"The answer is incorrect. Please try again. Here's the question: {PROBLEM.question}"
INSTRUCTION = (
    "You are an AI language model designed to assist with math problem-solving. In this task, I "
    "will provide you with math problems. Your goal is to solve the problem step-by-step, "
    "showing your reasoning at each step. After you have finished solving the problem, present "
    "your final answer as \\boxed{Your Answer}.\n\nHere is the math word problem for you to "
    "solve:\n\n"
)


def test_reference_texts_are_the_authors() -> None:
    assert REFERENCE_INSTRUCTION == INSTRUCTION
    assert DEMONSTRATION_PROBLEM.startswith("Of the 60 students in the drama club, 36 take")
    assert DEMONSTRATION_SOLUTION.startswith("Step 1: To find the number of drama club students")
    assert DEMONSTRATION_SOLUTION.endswith("students taking neither. Answer: \\boxed{17}")


@pytest.mark.parametrize("task", ["gsm8k", "math"])
def test_benchmarks_default_to_the_reference_one_shot_format(task) -> None:
    prompt = get_task(task).prompt  # building a task reads no data
    assert prompt.first_messages(PROBLEM) == [
        {"role": "user", "content": INSTRUCTION + DEMONSTRATION_PROBLEM},
        {"role": "assistant", "content": DEMONSTRATION_SOLUTION},
        {
            "role": "user",
            "content": "Great job! You've successfully answered the question. "
            "Now, let's move on to the next one.\n" + PROBLEM.question,
        },
    ]
    assert prompt.retry_message(PROBLEM) == {"role": "user", "content": RETRY}


@pytest.mark.parametrize("task", ["gsm8k", "math"])
def test_zero_shot_benchmark_prompt_is_the_instruction_then_the_problem(task) -> None:
    prompt = get_task(task, prompt="zero-shot").prompt
    assert prompt.first_messages(PROBLEM) == [
        {"role": "user", "content": INSTRUCTION + PROBLEM.question}
    ]


def test_arith_stays_zero_shot_with_the_bare_question_and_can_take_the_options() -> None:
    assert get_task("arith").prompt == PromptFormat()
    assert get_task("arith").prompt.first_messages(PROBLEM) == [
        {"role": "user", "content": PROBLEM.question}
    ]
    one_shot = get_task("arith", prompt="one-shot").prompt.first_messages(PROBLEM)
    assert [m["role"] for m in one_shot] == ["user", "assistant", "user"]
    custom = get_task("arith", question_template="Solve: {question}", system_prompt="Be brief.")
    assert custom.prompt.first_messages(PROBLEM) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Solve: " + PROBLEM.question},
    ]


def test_system_prompt_and_retry_template_reach_every_turn() -> None:
    task = get_task(
        "gsm8k",
        system_prompt="You are a careful tutor.",
        retry_template="Wrong. Look again at: {question}",
    )
    messages = context(task.prompt, PROBLEM, [("first try", None), ("second try", None)], window=2)
    assert messages[0] == {"role": "system", "content": "You are a careful tutor."}
    assert messages[1:3] == [
        {"role": "user", "content": INSTRUCTION + DEMONSTRATION_PROBLEM},
        {"role": "assistant", "content": DEMONSTRATION_SOLUTION},
    ]
    # the window keeps the demonstration and the problem, then only the latest attempt
    assert messages[4:] == [
        {"role": "assistant", "content": "second try"},
        {"role": "user", "content": "Wrong. Look again at: " + PROBLEM.question},
    ]
    assert len(messages) == 6


def test_templates_may_hold_latex_braces_and_questions_are_not_reformatted() -> None:
    tricky = Problem(id="q", question="Is {question} or {x} literal?", answer="1")
    prompt = get_task("math", prompt="zero-shot", retry_template="No \\boxed{?} yet: {question}")
    assert prompt.prompt.first_messages(tricky)[0]["content"].endswith(tricky.question)
    assert prompt.prompt.retry_message(tricky)["content"] == "No \\boxed{?} yet: " + tricky.question


def test_demonstration_messages_are_copies() -> None:
    prompt = get_task("gsm8k").prompt
    prompt.first_messages(PROBLEM)[0]["content"] = "changed"
    assert prompt.first_messages(PROBLEM)[0]["content"].startswith("You are an AI")


def test_one_shot_conversation_through_a_chat_template() -> None:
    tokenizer = build_tokenizer()  # the toy model's template: <|role|>content<|end|>
    task = get_task("gsm8k", system_prompt="S")
    text = render(tokenizer, task.prompt.first_messages(PROBLEM), add_generation_prompt=True)
    assert text == (
        "<|system|>S<|end|>"
        f"<|user|>{INSTRUCTION}{DEMONSTRATION_PROBLEM}<|end|>"
        f"<|assistant|>{DEMONSTRATION_SOLUTION}<|end|>"
        "<|user|>Great job! You've successfully answered the question. Now, let's move on to "
        f"the next one.\n{PROBLEM.question}<|end|>"
        "<|assistant|>"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prompt": "two-shot"}, r"prompt must be one of zero-shot, one-shot, got 'two-shot'"),
        ({"question_template": "Solve it."}, r"question_template must contain \{question\}"),
        ({"retry_template": {"question": None}}, r"retry_template must be text, got dict"),
        ({"system_prompt": 3}, r"system_prompt must be text, got int"),
        ({"prompt": PromptFormat(), "system_prompt": "S"}, r"either a PromptFormat"),
        ({"prompts": "one-shot"}, r"no option\(s\) prompts.*retry_template"),
    ],
)
def test_bad_prompt_options_are_clear_errors(options, message) -> None:
    with pytest.raises(RiseError, match=message):
        get_task("gsm8k", **options)


def test_a_prompt_format_object_is_used_as_given() -> None:
    mine = PromptFormat(question_template="Q: {question}", retry_template=REFERENCE_RETRY)
    assert get_task("math", prompt=mine).prompt is mine
