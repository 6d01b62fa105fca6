"""`rise train` under `accelerate launch`: real two-process DDP on the CPU (gloo), unchanged.

Two processes with 2 examples each must train the same weights as one process with 4, on the
same data order (same seed, no dropout). That holds only if the loss is the same global quantity
under DDP: each process takes the mean over its 2 examples of weight x mean token NLL, and DDP
averages the two gradients into that of the mean over all 4. The weights differ per example
(12.18, 1, 0.082), so a wrongly normalised loss would show. A DDP run killed after its checkpoint
resumes to the same weights as an uninterrupted single-process run. Every shipped accelerate
config must load.

Why the comparison trains with SGD and compares updates relatively: the two runs add the same
gradient terms in another order, so their float32 gradients differ by rounding (~1e-7 of the
gradient). Adam divides each update by the root of its second moment, so where a gradient is
near Adam's eps (1e-8) that rounding is amplified up to lr/eps = 1e6 times: a weight differed by
2.4e-5 on an AMD EPYC and by less on an Intel Xeon, and any fixed tolerance is a bet on the CPU.
It is also blind to the bugs this test is for: Adam's step does not change when every gradient
is doubled (summed instead of averaged), and gradient clipping would rescale a doubled gradient
back anyway. Plain SGD with momentum and no clipping has an update linear in the gradient, so
rounding stays ~1e-7 of the update on any CPU and the tolerance below is relative to the update
(1e-4: a thousand times the rounding, a thousandth of any of the bugs, which change the update
by 0.3 or more of itself): summed gradients (2x), a process on the wrong shard, a resume that
loses the momentum buffer or restarts the warmup schedule (both tested by breaking them).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig
from safetensors.torch import load_file

from rise_llm.records import TrainingExample, write_jsonl
from rise_llm.tasks.arith import ArithTask
from rise_llm.tasks.base import REFERENCE_RETRY
from rise_llm.train import MODEL_DIR, TRAIN_RECORD, TrainConfig, run

ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
ACCELERATE = str(Path(sys.executable).parent / "accelerate")
WEIGHTS = (12.18, 1.0, 0.082)  # RWR weights of rewards 1, 0, -1
TOLERANCE = 1e-4  # of the largest weight update; see the module docstring
# The same training but for the batch split. The warmup is a number of steps, so a run cut short
# at step 2 and resumed to step 4 follows the 4-step run exactly (learning rates 0, 1/3, 2/3, 1
# of lr), and a resume that restarted the schedule would not.
COMMON = dict(lr=1e-2, optim="sgd", optim_args="momentum=0.9", max_grad_norm=0.0)
COMMON.update(scheduler="constant_with_warmup", warmup_steps=3, group_by_length=False)
COMMON.update(logging_steps=1, save_steps=2, seed=0)


def test_shipped_accelerate_configs_load():
    paths = sorted(ACCELERATE_CONFIGS.glob("*.yaml"))
    assert [p.name for p in paths] == ["ddp.yaml", "deepspeed-zero3.yaml", "fsdp.yaml"]
    for path in paths:
        first = path.read_text().splitlines()[0]
        assert first.startswith(f"# accelerate launch --config_file configs/accelerate/{path.name}")
        config = ClusterConfig.from_yaml_file(path)  # unknown keys are an error
        assert config.mixed_precision == "bf16"  # the reference trained in bf16
    zero3 = ClusterConfig.from_yaml_file(ACCELERATE_CONFIGS / "deepspeed-zero3.yaml")
    assert zero3.deepspeed_config["zero_stage"] == 3
    assert zero3.deepspeed_config["zero3_save_16bit_model"]  # a whole model is saved
    assert "gradient_accumulation_steps" not in zero3.deepspeed_config  # `rise train` sets it
    fsdp = ClusterConfig.from_yaml_file(ACCELERATE_CONFIGS / "fsdp.yaml")
    assert fsdp.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def _data(folder: Path) -> Path:
    task = ArithTask()
    examples = []
    for i, p in enumerate(task.problems("train", 16)):
        messages = [
            {"role": "user", "content": p.question},
            {"role": "assistant", "content": "1 + 1 = 3\nAnswer: \\boxed{3}"},
            {"role": "user", "content": REFERENCE_RETRY.format(question=p.question)},
            {"role": "assistant", "content": task.solution(p)},
        ]
        weight = WEIGHTS[i % 3]
        examples.append(TrainingExample(messages, reward=1, weight=weight, turn=2, problem_id=p.id))
    folder.mkdir()
    write_jsonl(folder / "data.jsonl", examples)
    return folder


def _flags(settings: dict) -> list[str]:
    flags = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, str(value)]
    return flags


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_train(
    model, data, out, max_steps, config: str = "ddp.yaml", env: dict | None = None
) -> str:
    """`rise train` as two processes through `accelerate launch` and a shipped config (DDP
    unless `config` says otherwise), in float32: the shipped configs' bf16 would autocast the
    products to bfloat16 on the CPU too, ~3e-3 of the update from a float32 run."""
    launch = [ACCELERATE, "launch", "--config_file", str(ACCELERATE_CONFIGS / config)]
    launch += ["--num_processes", "2", "--mixed_precision", "no"]
    launch += ["--main_process_port", str(_free_port()), "-m", "rise_llm", "train"]
    settings = dict(model=model, data=data, out=out, batch_size=2, max_steps=max_steps, **COMMON)
    # no --device cpu: the same command as on GPUs; with none visible it runs on gloo
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "COLUMNS": "500",
        **(env or {}),
    }
    done = subprocess.run(launch + _flags(settings), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def _single_train(model, data, out, max_steps) -> Path:
    config = TrainConfig(
        model=str(model), data=[str(data)], out=str(out), batch_size=4, max_steps=max_steps
    )
    for key, value in COMMON.items():
        setattr(config, key, value)
    config.device = "cpu"
    return run(config)


def _max_difference(a: Path, b: Path) -> float:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def _relative_difference(a: Path, b: Path, start: Path) -> float:
    """Largest weight difference of a and b, over the largest change b made from `start`."""
    return _max_difference(a, b) / _max_difference(b, start)


def _losses(out: Path) -> dict[int, float]:
    log = json.loads((out / TRAIN_RECORD).read_text())["log"]
    return {entry["step"]: entry["loss"] for entry in log if "loss" in entry}


@pytest.mark.slow
def test_two_process_ddp_trains_the_weights_of_one_process(tiny_model_dir, tmp_path):
    data = _data(tmp_path / "data")
    ddp, single2, single4 = tmp_path / "ddp", tmp_path / "single2", tmp_path / "single4"

    output = _ddp_train(tiny_model_dir, data, ddp, max_steps=2)
    _single_train(tiny_model_dir, data, single2, max_steps=2)
    first = _relative_difference(ddp / MODEL_DIR, single2 / MODEL_DIR, tiny_model_dir)
    assert _max_difference(ddp / MODEL_DIR, tiny_model_dir) > 1e-3  # it did train
    assert first < TOLERANCE
    assert _losses(ddp) == pytest.approx(_losses(single2), rel=1e-5)  # the same global loss
    assert json.loads((ddp / TRAIN_RECORD).read_text())["steps"] == 2
    assert output.count("trained model:") == 2  # both processes ran `rise train` to the end

    # killed after the checkpoint at step 2: the model and record are not written yet
    shutil.rmtree(ddp / MODEL_DIR)
    (ddp / TRAIN_RECORD).unlink()
    output = _ddp_train(tiny_model_dir, data, ddp, max_steps=4)
    assert output.count(f"train: resuming from {ddp / 'checkpoints' / 'checkpoint-2'}") == 2
    _single_train(tiny_model_dir, data, single4, max_steps=4)
    resumed = _relative_difference(ddp / MODEL_DIR, single4 / MODEL_DIR, tiny_model_dir)
    assert _max_difference(ddp / MODEL_DIR, single2 / MODEL_DIR) > 1e-3  # steps 3 and 4 ran
    assert resumed < TOLERANCE
    assert _losses(ddp) == pytest.approx(_losses(single4), rel=1e-5)
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == ["checkpoint-4"]
    print(f"\nDDP against one process, max weight difference / max update: {first:.1e} after")
    print(f"2 steps, {resumed:.1e} after 4 steps (killed after 2, resumed)")


@pytest.mark.slow
def test_two_process_fsdp_trains_the_weights_of_one_process(tiny_model_dir, tmp_path):
    """The shipped FSDP2 config (weights, gradients and optimiser state sharded per decoder
    layer, the model gathered into one folder at the end) on 2 CPU processes: the gathered model
    is that of one process, to the same relative tolerance as DDP."""
    data = _data(tmp_path / "data")
    fsdp, single = tmp_path / "fsdp", tmp_path / "single"
    output = _ddp_train(tiny_model_dir, data, fsdp, max_steps=2, config="fsdp.yaml")
    _single_train(tiny_model_dir, data, single, max_steps=2)
    difference = _relative_difference(fsdp / MODEL_DIR, single / MODEL_DIR, tiny_model_dir)
    assert _max_difference(fsdp / MODEL_DIR, tiny_model_dir) > 1e-3  # it did train
    assert difference < TOLERANCE
    assert _losses(fsdp) == pytest.approx(_losses(single), rel=1e-5)
    assert output.count("trained model:") == 2
    saved = load_file(fsdp / MODEL_DIR / "model.safetensors")
    assert saved.keys() == load_file(single / MODEL_DIR / "model.safetensors").keys()  # whole
    print(f"\nFSDP against one process, max weight difference / max update: {difference:.1e}")


@pytest.mark.slow
def test_two_process_zero3_trains_the_weights_of_one_process(tiny_model_dir, tmp_path):
    """The shipped DeepSpeed ZeRO-3 config on 2 CPU processes through DeepSpeed's CPU
    accelerator (DS_ACCELERATOR=cpu): the model gathered from the partitions
    (zero3_save_16bit_model) is that of one process. DeepSpeed is not a dependency of rise-llm
    (`pip install deepspeed`, an sdist that builds no op at install with DS_BUILD_OPS=0); its
    first use on a machine compiles its CPU communication op (C++, ~1 min on 2 cores, then
    cached in ~/.cache/torch_extensions)."""
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install deepspeed)")
    data = _data(tmp_path / "data")
    zero3, single = tmp_path / "zero3", tmp_path / "single"
    env = {"DS_ACCELERATOR": "cpu"}
    output = _ddp_train(tiny_model_dir, data, zero3, 2, config="deepspeed-zero3.yaml", env=env)
    _single_train(tiny_model_dir, data, single, max_steps=2)
    difference = _relative_difference(zero3 / MODEL_DIR, single / MODEL_DIR, tiny_model_dir)
    assert _max_difference(zero3 / MODEL_DIR, tiny_model_dir) > 1e-3  # it did train
    assert difference < TOLERANCE
    assert _losses(zero3) == pytest.approx(_losses(single), rel=1e-5)
    assert output.count("trained model:") == 2
    print(f"\nZeRO-3 against one process, max weight difference / max update: {difference:.1e}")
