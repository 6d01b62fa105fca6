"""`rise run` with `train.launch`: iteration 1 trained by `accelerate launch` as 2 CPU processes
(gloo, the shipped ddp.yaml) against the same run trained in the run's own process.

Both runs hold the same base evaluation, collection and training data (the launched run gets a
copy of the in-process run's finished stages: every stage skips work it finished), so they
differ only in how iteration 1 trains: 1 process with batches of 4, or 2 processes with 2 each,
the same global batch on the same data order (same seed, `group_by_length` off: length grouping
depends on the per-process batch). The weights must then agree up to float rounding. As in
tests/test_distributed.py (whose docstring explains it), training uses SGD with momentum and no
clipping, whose update is linear in the gradient: the two runs add the same gradient terms in
another order, so their updates differ by rounding, ~1e-7 of the update on any CPU; the
tolerance, 1e-4 of the largest weight update, is a thousand times that and a thousandth of what
a wrongly averaged gradient (2x), a process on the wrong shard or a lost step would change.
Adam would amplify the rounding up to lr/eps times where a gradient is near its eps. Measured:
4.7e-6 on an AMD EPYC (family 26, model 2), above the 7.8e-7 of test_distributed.py's fixed
data, probably because the collected examples differ more in length: each process pads its 2
examples to the longer one where one process pads 4 to the longest, so the products run over
other shapes, with other rounding.

The same comparison holds for a run on two "machines": two `rise run` processes of one config
on this machine, machine_rank 0 and 1 with one training process each, meeting on 127.0.0.1.

A failed launch is one line naming its log, a rerun of a finished run launches nothing, and a
run killed by SIGKILL leaves no training process behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import QUICK_RUN
from test_distributed import COMMON, TOLERANCE, _losses, _max_difference, _relative_difference

from rise_llm.engines.served import free_port
from rise_llm.errors import RiseError
from rise_llm.launch import LOG, last_error
from rise_llm.pipeline import load_run_config, run, run_settings
from rise_llm.provenance import write_run_record
from rise_llm.train import MODEL_DIR, TRAIN_RECORD

# one iteration, few problems: the stages before training only make its data
SMALL = ["iterations=1", "collect.limit=6", "collect.samples=2", "evaluate.limit=2"]
SMALL += ["evaluate.turns=2", "train.max_steps=2", "device=cpu"]
SMALL += [f"train.{key}={value}" for key, value in COMMON.items()]
SMALL += ["train.lr=0.1"]  # the two steps' learning rates are 0 and lr/3 (warmup): a clear update
# the shipped DDP config (bf16, 8 GPUs) on 2 CPU processes: no bf16 autocast on the CPU
LAUNCH = "train.launch={num_processes: 2, config_file: ddp, mixed_precision: 'no'}"


def _config(model: Path, out: Path, *extra: str):
    return load_run_config(QUICK_RUN, [f"base_model={model}", f"out={out}", *SMALL, *extra])


@pytest.mark.parametrize(
    "section, message",
    [
        ("{num_processes: 0}", "train.launch.num_processes must be at least 1, got 0"),
        ("{config_file: ddp}", "train.launch.num_processes: required setting is missing"),
        ("{num_processes: 2, gpus: 2}", "train.launch.gpus: unknown setting"),
        ("{num_processes: 2, config_file: nope.yaml}", "train.launch.config_file: nope.yaml is"),
        (f"{{num_processes: 2, config_file: {QUICK_RUN}}}", "yaml is not a valid accelerate"),
        ("{num_processes: 3, num_machines: 2, main_process_ip: h}", "must be a multiple of"),
        ("{num_processes: 4, num_machines: 2}", "train.launch.main_process_ip: the address"),
        ("{num_processes: 2, machine_rank: 1}", "train.launch.machine_rank must be in [0, 1)"),
        ("{num_processes: 2, mixed_precision: bf17}", "train.launch.mixed_precision must be"),
    ],
)
def test_a_bad_launch_section_fails_at_load_naming_the_field(section, message):
    with pytest.raises(RiseError) as bad:
        load_run_config(QUICK_RUN, ["base_model=m", f"train.launch={section}"])
    assert message in str(bad.value)


def test_a_shipped_config_by_name_and_the_flags_of_the_same_training():
    config = load_run_config(QUICK_RUN, ["base_model=m", "train.launch={num_processes: 8}"])
    command = config.launch_config().command(config.train_config(1))
    assert command[3:7] == [
        "--config_file",
        str(config.launch_config().config_path),
        "--num_processes",
        "8",
    ]
    assert Path(command[4]).name == "ddp.yaml" and Path(command[4]).is_file()
    assert command[command.index("rise_llm") + 1] == "train"
    assert "--max-steps=3" in command and "--lr=0.001" in command  # the run's train section


def test_the_error_line_of_a_log(tmp_path):
    log = tmp_path / LOG
    assert last_error(log) == "(no output)"
    log.write_text(
        "[rank0]: Traceback (most recent call last):\n[rank0]: ValueError: bad\n"
        "subprocess.CalledProcessError: Command 'x' returned 1\n"
    )
    assert last_error(log) == "ValueError: bad"  # not the launcher's wrapper
    log.write_text(log.read_text() + "rise train: error: train: no data\nTypeError: later\n")
    assert last_error(log) == "rise train: error: train: no data"


def test_machine_1_refuses_a_run_folder_of_another_config(tmp_path):
    """Machine h > 0 checks node 0's config.json before it waits for anything: a machine given
    another config (here another learning rate) stops at once instead of training otherwise."""
    section = "{num_processes: 2, num_machines: 2, main_process_ip: 127.0.0.1}"
    overrides = ["base_model=m", f"out={tmp_path}", f"train.launch={section}"]
    machine_0 = load_run_config(QUICK_RUN, overrides)
    write_run_record(tmp_path, run_settings(machine_0))
    machine_1 = load_run_config(QUICK_RUN, [*overrides, "train.launch.machine_rank=1"])
    assert machine_1.launch_config().log_name() == "launch-node1.log"
    with pytest.raises(RiseError, match=r"holds a run with different settings \(train\)"):
        run(load_run_config(QUICK_RUN, [*overrides, "train.launch.machine_rank=1", "train.lr=1"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # it wrote nothing


def test_machine_1_says_it_is_still_waiting_for_machine_0(tmp_path, monkeypatch, capsys):
    """Machine h > 0 waits for machine 0's data without a limit (a collection may take hours),
    but says so again every STILL_WAITING seconds, so a machine 0 that died shows."""
    from rise_llm import pipeline

    section = "{num_processes: 2, num_machines: 2, main_process_ip: 127.0.0.1}"
    overrides = ["base_model=m", f"out={tmp_path}", f"train.launch={section}"]
    write_run_record(tmp_path, run_settings(load_run_config(QUICK_RUN, overrides)))
    machine_1 = load_run_config(QUICK_RUN, [*overrides, "train.launch.machine_rank=1"])
    looks = []  # each sleep moves the clock on by 100 s

    def sleep(seconds: float) -> None:
        looks.append(seconds)
        if len(looks) == 25:
            raise KeyboardInterrupt  # the user gives up

    monkeypatch.setattr(pipeline.time, "monotonic", lambda: 100.0 * len(looks))
    monkeypatch.setattr(pipeline.time, "sleep", sleep)
    monkeypatch.setattr(pipeline, "STILL_WAITING", 600.0)
    with pytest.raises(KeyboardInterrupt):
        run(machine_1)
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("machine 1 of 2: waiting for machine 0 to build") == 1
    # at 0 s it says it waits; then at 600, 1200, 1800 and 2400 s (25 sleeps)
    still = [m.split("(")[1].split()[0] for m in err.split("still waiting")[1:]]
    assert still == ["10", "20", "30", "40"]
    assert "is machine 0's rise run still going?" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # it wrote nothing


@pytest.fixture(scope="module")
def in_process(tiny_model_dir, tmp_path_factory) -> Path:
    """The run with iteration 1 trained in its own process, batches of 4."""
    out = tmp_path_factory.mktemp("launch") / "in-process"
    run(_config(tiny_model_dir, out, "train.batch_size=4"))
    return out


def _prepared(in_process: Path, out: Path) -> Path:
    """A run folder holding the in-process run's finished stages before its training."""
    for stage in ("base", "iter1/collect", "iter1/data"):
        shutil.copytree(in_process / stage, out / stage)
    return out


@pytest.fixture(autouse=True)
def _cpu_children(monkeypatch):
    # the launched processes see no GPU (gloo) and take one core each
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.mark.slow
def test_launched_training_matches_the_in_process_run(tiny_model_dir, in_process, tmp_path):
    out = _prepared(in_process, tmp_path / "launched")
    config = _config(tiny_model_dir, out, "train.batch_size=2", LAUNCH)
    run(config)

    launched, single = out / "iter1" / "train", in_process / "iter1" / "train"
    assert _max_difference(launched / MODEL_DIR, tiny_model_dir) > 1e-3  # it did train
    difference = _relative_difference(launched / MODEL_DIR, single / MODEL_DIR, tiny_model_dir)
    assert difference < TOLERANCE
    assert _losses(launched) == pytest.approx(_losses(single), rel=1e-5)  # the same global loss
    assert json.loads((launched / TRAIN_RECORD).read_text())["processes"] == 2
    assert json.loads((single / TRAIN_RECORD).read_text())["processes"] == 1
    log = (launched / LOG).read_text()
    assert log.count("trained model:") == 2  # both processes ran `rise train`, logged here
    assert (out / "iter1" / "eval" / "metrics.json").exists()  # the run went on after it
    recorded = json.loads((out / "config.json").read_text())["config"]["train"]["launch"]
    assert recorded["num_processes"] == 2

    # a rerun finds the training done and launches nothing, even on another port (where the
    # processes meet is not what they train); another number of processes is another training
    run(
        _config(
            tiny_model_dir,
            out,
            "train.batch_size=2",
            LAUNCH,
            "train.launch.main_process_port=29999",
        )
    )
    assert (launched / LOG).read_text() == log
    with pytest.raises(RiseError, match=r"holds a run with different settings \(train\)"):
        run(
            _config(
                tiny_model_dir, out, "train.batch_size=2", LAUNCH, "train.launch.num_processes=1"
            )
        )
    print(
        f"\nlaunched (2 processes) against in-process: max weight difference / max update "
        f"{difference:.1e}"
    )


@pytest.mark.slow
def test_a_failed_launch_is_one_line_with_its_log(tiny_model_dir, in_process, tmp_path):
    out = _prepared(in_process, tmp_path / "failed")
    # a config accelerate reads but its FSDP plugin refuses: each training process crashes
    bad = tmp_path / "fsdp3.yaml"
    text = (Path(QUICK_RUN).parent / "accelerate" / "fsdp.yaml").read_text()
    bad.write_text(text.replace("fsdp_version: 2", "fsdp_version: 3"))
    launch = f"train.launch={{num_processes: 2, config_file: {bad}, mixed_precision: 'no'}}"
    with pytest.raises(RiseError) as failed:
        run(_config(tiny_model_dir, out, "train.batch_size=2", launch))
    message = str(failed.value)
    log = out / "iter1" / "train" / LOG
    assert "\n" not in message
    assert message.startswith(f"train: accelerate launch exited with status 1; see {log}: ")
    # the line named is the last exception of a training process's own traceback, not the
    # launcher's ChildFailedError that follows it in the log
    lines = log.read_text().splitlines()
    crashes = [line.split("]: ", 1)[1] for line in lines if line.startswith("[rank")]
    crashes = [line for line in crashes if re.match(r"\w+Error: ", line)]
    assert crashes and message.endswith(f": {crashes[-1]}")
    assert "ChildFailedError" in log.read_text()


def _trainers(out: Path) -> list[int]:
    """The live processes training into `out` (torch's launcher starts each training process
    in a session of its own, outside the launch's process group; zombies left out)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
            command = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if state != "Z" and b"train" in command and f"--out={out}".encode() in command:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_a_killed_run_takes_its_training_down(tiny_model_dir, in_process, tmp_path):
    """`rise run` killed by SIGKILL (it cannot stop anything itself) while its two training
    processes run: the watcher of the launch's process group sends it SIGTERM, on which torch's
    launcher stops its training processes; none is left."""
    out = _prepared(in_process, tmp_path / "killed")
    overrides = [f"base_model={tiny_model_dir}", f"out={out}", *SMALL, "train.batch_size=2", LAUNCH]
    command = [sys.executable, "-m", "rise_llm", "run", str(QUICK_RUN)]
    command += [arg for override in overrides for arg in ("--set", override)]
    rise = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    train = out / "iter1" / "train"
    deadline = time.monotonic() + 120
    while len(_trainers(train)) < 2:
        assert rise.poll() is None and time.monotonic() < deadline, "the training never started"
        time.sleep(0.1)
    os.kill(rise.pid, 9)
    rise.wait()
    deadline = time.monotonic() + 60  # the watcher looks every 0.5 s; SIGKILL after 20 s
    while _trainers(train) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _trainers(train) == []
    assert not (train / TRAIN_RECORD).exists()  # killed before it finished


def _rise_run(overrides: list[str], log: Path) -> subprocess.Popen:
    """`rise run` of the quick config with `--set` overrides, as a user types it; output to log."""
    command = [sys.executable, "-m", "rise_llm", "run", str(QUICK_RUN)]
    command += [arg for override in overrides for arg in ("--set", override)]
    with log.open("wb") as stream:
        return subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT)


def _files(out: Path) -> dict[str, int]:
    """Every file under `out` and its modification time (ns): what a process wrote there."""
    return {str(f.relative_to(out)): f.stat().st_mtime_ns for f in out.rglob("*") if f.is_file()}


@pytest.mark.slow
def test_two_machines_on_loopback_match_the_in_process_run(tiny_model_dir, in_process, tmp_path):
    """Two "machines" on this one: the same `rise run` command twice, `machine_rank` 0 and 1,
    one training process each (global batch 2 x 2, as above), one shared run folder. Machine
    1 starts first and waits for the data machine 0 builds (from the in-process run's
    collection, copied in: the same data), then both launch their part of iteration 1's
    training and meet on 127.0.0.1; machine 0 then evaluates and writes the summary."""
    out = tmp_path / "nodes"
    for stage in ("base", "iter1/collect"):
        shutil.copytree(in_process / stage, out / stage)
    section = "{num_processes: 2, num_machines: 2, main_process_ip: 127.0.0.1, "
    section += f"main_process_port: {free_port()}, config_file: ddp, mixed_precision: 'no'}}"
    overrides = [f"base_model={tiny_model_dir}", f"out={out}", *SMALL, "train.batch_size=2"]
    overrides.append(f"train.launch={section}")
    logs = [tmp_path / "machine0.log", tmp_path / "machine1.log"]
    machines = [_rise_run([*overrides, "train.launch.machine_rank=1"], logs[1])]
    try:
        deadline = time.monotonic() + 120
        while "waiting for machine 0 to build" not in logs[1].read_text():
            assert machines[0].poll() is None, logs[1].read_text()[-3000:]
            assert time.monotonic() < deadline, "machine 1 never waited for the data"
            time.sleep(0.2)
        assert not (out / "iter1" / "data").exists()  # machine 1 builds nothing
        machines.insert(0, _rise_run(overrides, logs[0]))
        for machine, log in zip(machines, logs, strict=True):
            assert machine.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        for machine in machines:
            if machine.poll() is None:  # a failed assertion above: its watcher ends its training
                machine.kill()
                machine.wait()

    train, single = out / "iter1" / "train", in_process / "iter1" / "train"
    assert _max_difference(train / MODEL_DIR, tiny_model_dir) > 1e-3  # it did train
    difference = _relative_difference(train / MODEL_DIR, single / MODEL_DIR, tiny_model_dir)
    assert difference < TOLERANCE
    assert _losses(train) == pytest.approx(_losses(single), rel=1e-5)
    assert json.loads((train / TRAIN_RECORD).read_text())["processes"] == 2
    # each machine's training process ran `rise train`, logged on its own machine
    assert (train / LOG).read_text().count("trained model:") == 1
    assert (train / "launch-node1.log").read_text().count("trained model:") == 1
    assert "--machine_rank 1" in (train / "launch-node1.log").read_text()
    assert (out / "summary.json").exists() and (out / "iter1" / "eval" / "metrics.json").exists()
    assert "all 1 trainings done" in logs[1].read_text()

    # machine 1 again: the training is done, it launches nothing and writes nothing
    written = _files(out)
    rerun = _rise_run([*overrides, "train.launch.machine_rank=1"], tmp_path / "rerun.log")
    assert rerun.wait(timeout=300) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    assert "train: already done" in (tmp_path / "rerun.log").read_text()
    assert _files(out) == written
    print(
        f"\ntwo machines (1 process each) against in-process: max weight difference / max "
        f"update {difference:.1e}"
    )
