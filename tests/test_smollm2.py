"""A real pretrained chat model through the whole path: SmolLM2-135M-Instruct from its GGUF file
(weights, tokenizer and chat template; see the `smollm2_gguf` fixture), on GSM8K from
../shared/data. Slow: several minutes on a 2-core CPU. The model need not score well; the
artefacts of every stage must be valid.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import assert_metrics_match_episodes

from rise_llm import collect, data, evaluate, train
from rise_llm.chat import IGNORE_INDEX, encode_conversation, prompt_ids
from rise_llm.cli import main
from rise_llm.engines.base import SamplingParams
from rise_llm.engines.hf import HFEngine
from rise_llm.records import CollectedEpisode, Episode, TrainingExample, read_jsonl

pytestmark = pytest.mark.slow

GSM8K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k"
"""../shared/data/gsm8k, relative to the repository root (never copied into the repo)."""


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf) -> HFEngine:
    return HFEngine.load(str(smollm2_gguf), device="cpu", dtype="float32", batch_size=32)


@pytest.fixture(scope="module")
def gsm8k() -> dict:
    if not (GSM8K / "test.jsonl").exists():
        pytest.skip(f"GSM8K data not found at {GSM8K}")
    return {"data": str(GSM8K)}


def test_the_gguf_brings_its_tokenizer_and_chat_template(smollm2):
    tok = smollm2.tokenizer
    assert "<|im_start|>" in tok.chat_template
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id is not None
    assert smollm2.model.config.model_type == "llama"
    assert sum(p.numel() for p in smollm2.model.parameters()) > 100_000_000
    # unpacked into a plain model: trainable and savable like any other
    assert not smollm2.model.is_quantized
    assert getattr(smollm2.model.config, "quantization_config", None) is None


def test_real_tokenizer_trains_the_tokens_that_sampling_continues(smollm2):
    """SmolLM2's own tokenizer and template over a three-attempt history: the training ids of
    each assistant turn start with exactly the sampling prompt's ids."""
    tok = smollm2.tokenizer
    question = "Natalia sold 48 clips in April and half as many in May. How many in all?"
    retry = f"The answer is incorrect. Please try again. Here's the question: {question}"
    history = [{"role": "user", "content": question}]
    for attempt in ("48 + 24 = 70. \\boxed{70}", "48 / 2 = 24\n48 + 24 = 72. \\boxed{72}"):
        history += [{"role": "assistant", "content": attempt}, {"role": "user", "content": retry}]
    history.append({"role": "assistant", "content": "So 72 clips.\n\\boxed{72}"})
    for i in (1, 3, 5):
        prompt = prompt_ids(tok, history[:i])
        enc = encode_conversation(tok, history[: i + 1])
        assert enc.input_ids[: len(prompt)] == prompt
        assert all(label == IGNORE_INDEX for label in enc.labels[: len(prompt)])
        trained = [t for t in enc.labels if t != IGNORE_INDEX]
        assert tok.decode(trained).startswith(history[i]["content"] + "<|im_end|>")


def test_evaluate_ten_gsm8k_problems_from_the_command_line(smollm2_gguf, gsm8k, tmp_path):
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            "--model",
            str(smollm2_gguf),
            "--task",
            "gsm8k",
            "--task-option",
            f"data={gsm8k['data']}",
            "--limit",
            "10",
            "--turns",
            "2",
            "--max-new-tokens",
            "128",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 10 and metrics["turns"] == 2
    episodes = read_jsonl(out / "episodes.jsonl", Episode)
    assert_metrics_match_episodes(metrics, episodes, 2)
    assert sorted({e.mode for e in episodes}) == ["no_oracle", "oracle", "parallel"]
    no_oracle = [e for e in episodes if e.mode == "no_oracle"]
    assert len(no_oracle) == 10 and all(len(e.turns) == 2 for e in no_oracle)
    for e in no_oracle:
        first, second = e.turns
        assert first.reward in (-1, 0, 1) and first.response
        # turn 2 sees the first attempt and the reference retry message
        assert second.messages[-2] == {"role": "assistant", "content": first.response}
        assert second.messages[-1]["content"].startswith("The answer is incorrect.")


def test_collect_build_data_train_and_reload(smollm2, smollm2_gguf, gsm8k, tmp_path):
    episodes = collect.run(
        collect.CollectConfig(
            model=str(smollm2_gguf),
            out=str(tmp_path / "collect"),
            task="gsm8k",
            task_options=gsm8k,
            limit=3,
            turns=2,
            samples=2,
            max_new_tokens=96,
            device="cpu",
        ),
        learner=smollm2,
    )
    stored = read_jsonl(tmp_path / "collect" / collect.EPISODES, CollectedEpisode)
    assert [e.problem_id for e in stored] == [e.problem_id for e in episodes]
    assert len(stored) == 3
    for e in stored:
        assert len(e.turns[0].attempts) == 1  # turn 1: one on-policy attempt
        for turn in e.turns[1:]:
            assert len(turn.attempts) == 2  # later turns: best of N=2
            assert turn.chosen_attempt.reward == max(a.reward for a in turn.attempts)

    examples = data.build(
        data.BuildDataConfig(episodes=[str(tmp_path / "collect")], out=str(tmp_path / "data"))
    )
    stored_examples = read_jsonl(tmp_path / "data" / data.DATA, TrainingExample)
    assert stored_examples == examples and examples
    for ex in examples:
        assert ex.weight == pytest.approx(math.exp(ex.reward / 0.4))
        assert ex.messages[-1]["role"] == "assistant"

    model_dir = train.run(
        train.TrainConfig(
            model=str(smollm2_gguf),
            data=[str(tmp_path / "data")],
            out=str(tmp_path / "train"),
            max_steps=1,
            batch_size=2,
            lr=1e-4,
            warmup_ratio=0.0,  # with warmup, the only step would have learning rate 0
            device="cpu",
        )
    )
    record = json.loads((tmp_path / "train" / train.TRAIN_RECORD).read_text())
    assert record["steps"] == 1 and math.isfinite(record["train_loss"])

    trained = HFEngine.load(str(model_dir), device="cpu", dtype="float32")
    assert trained.tokenizer.chat_template == smollm2.tokenizer.chat_template
    before = dict(smollm2.model.named_parameters())
    changed = [
        name
        for name, p in trained.model.named_parameters()
        if not torch.equal(p, before[name].to(p.dtype))
    ]
    assert changed, "one training step changed no weight"
    out = trained.generate(
        [[{"role": "user", "content": "What is 2 + 3?"}]],
        n=2,
        params=SamplingParams(max_new_tokens=8),
    )
    assert [len(s) for s in out] == [2] and all(c.num_tokens >= 1 for c in out[0])


def test_smollm2_on_arith(smollm2):
    """The embedded task works with a real chat model too (it need not solve it)."""
    result = evaluate.run(
        evaluate.EvaluateConfig(
            model="smollm2", task="arith", limit=3, turns=1, max_new_tokens=32, device="cpu"
        ),
        engine=smollm2,
    )
    assert result.metrics.n == 3
    assert_metrics_match_episodes(result.metrics.to_dict(), result.episodes, 1)
