"""Training as a child `accelerate launch ... -m rise_llm train ...`: how `rise run` trains on
several GPUs or machines (its `train.launch` section).

Without the section a run trains in its own process (`train.run`). With it, each iteration's
training is the command a user would type, `accelerate launch --config_file C --num_processes
N -m rise_llm train --model ... --data ... --out ...`, with the same settings the in-process
call would get, passed as `rise train` flags (checked to read back into the same `TrainConfig`
before anything starts). It runs in a process group of its own under `rise_llm.parent_watch`,
so it ends with the run even when the run is killed by SIGKILL, and an interrupted run
(Ctrl-C) stops it before it returns. Both stop it with SIGTERM first: torch's launcher starts
each training process in a session of its own, outside the group, and stops them on SIGTERM.
Its output goes to OUT/iterK/train/launch.log (appended to on a resume); a failure is one
line: the exit status, the log and the log's last error line.

A finished training is skipped without launching anything (the same `train.json` check as
`train.run`); an unfinished one is launched again and `rise train` resumes from its last
checkpoint, as in one process.

On several machines (`num_machines` > 1) every machine runs this with its own `machine_rank`
and the same run folder on a file system they all mount. Machine 0's launch logs to
launch.log as above; machine h's to launch-nodeH.log beside it, so no two machines write the
same file. Only the training's main process (on machine 0) writes the model and `train.json`;
machine h waits for that record after its own launch ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rise_llm.engines.served import free_port, stop_stale
from rise_llm.errors import RiseError
from rise_llm.progress import console
from rise_llm.provenance import check_out, check_settings
from rise_llm.train import MODEL_DIR, TRAIN_RECORD, TrainConfig, train_settings

SHIPPED = Path(__file__).resolve().parent / "configs" / "accelerate"
LOG = "launch.log"
PRECISIONS = ("no", "fp16", "bf16", "fp8")
ADDRESS = ("main_process_ip", "main_process_port", "machine_rank")
"""Where the processes meet, not what they train: these may change when a run resumes."""
RECORD_WAIT = 60.0
"""Seconds machine h > 0 waits for machine 0's `train.json` after its own launch ended well: a
shared file system may show another machine's new file late."""
GRACE = 40.0
"""Seconds an interrupted training has to stop after SIGTERM before its group gets SIGKILL:
more than the 30 s torch's launcher gives its training processes to stop."""


@dataclass
class LaunchConfig:
    """The `train.launch` section of a run config: each iteration trains under `accelerate
    launch` instead of in the run's own process.

    Args:
        num_processes: training processes in all, one per GPU (over all machines together).
            The global batch is train.batch_size x train.grad_accum x num_processes.
        config_file: an accelerate config file, or the name of a shipped one: "ddp", "fsdp",
            "deepspeed-zero3" (configs/accelerate/, also inside the installed package).
        num_machines: machines taking part; none keeps the config file's.
        machine_rank: this machine's rank, 0 on the main one; none keeps the config file's.
            In `rise run`, machine h > 0 only joins each iteration's training (`pipeline.join`):
            every machine runs the same config with its own rank (`--set
            train.launch.machine_rank=h`).
        main_process_ip: the address of machine 0; none keeps the config file's.
        main_process_port: its port; none keeps the config file's, or on one machine picks a
            free port for each launch (two runs on one machine then never collide).
        mixed_precision: "no", "fp16", "bf16" or "fp8" instead of the config file's (the
            shipped ones say bf16); e.g. "no" on a GPU without bf16.
    """

    num_processes: int
    config_file: str = "ddp"
    num_machines: int | None = None
    machine_rank: int | None = None
    main_process_ip: str | None = None
    main_process_port: int | None = None
    mixed_precision: str | None = None

    def __post_init__(self) -> None:
        where = "train.launch"
        if self.num_processes < 1:
            raise RiseError(f"{where}.num_processes must be at least 1, got {self.num_processes}")
        cluster = self.cluster()
        machines = self.machines
        if machines < 1:
            raise RiseError(f"{where}.num_machines must be at least 1, got {machines}")
        if self.num_processes % machines:
            raise RiseError(
                f"{where}.num_processes ({self.num_processes}) must be a multiple of "
                f"num_machines ({machines}): each machine runs as many"
            )
        rank = self.machine_rank if self.machine_rank is not None else cluster.machine_rank
        if not 0 <= rank < machines:
            raise RiseError(
                f"{where}.machine_rank must be in [0, {machines}) (num_machines), got {rank}"
            )
        if machines > 1 and not (self.main_process_ip or cluster.main_process_ip):
            raise RiseError(
                f"{where}.main_process_ip: the address of machine 0 is needed on "
                f"{machines} machines (here or in {self.config_path})"
            )
        port = self.main_process_port
        if port is not None and not 1 <= port <= 65535:
            raise RiseError(f"{where}.main_process_port must be in [1, 65535], got {port}")
        if self.mixed_precision is not None and self.mixed_precision not in PRECISIONS:
            raise RiseError(
                f"{where}.mixed_precision must be one of {', '.join(PRECISIONS)}, "
                f"got {self.mixed_precision!r}"
            )

    @property
    def config_path(self) -> Path:
        """The config file: a bare shipped name (ddp, fsdp, deepspeed-zero3) resolved."""
        shipped = SHIPPED / f"{self.config_file}.yaml"
        if "/" not in self.config_file and shipped.is_file():
            return shipped
        return Path(self.config_file)

    def cluster(self) -> Any:
        """The config file as accelerate reads it (unknown keys are an error there too)."""
        from accelerate.commands.config.config_args import ClusterConfig

        path = self.config_path
        if not path.is_file():
            names = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.yaml")))
            raise RiseError(
                f"train.launch.config_file: {path} is not a file; give an accelerate config "
                f"file or a shipped name ({names})"
            )
        try:
            return ClusterConfig.from_yaml_file(path)
        except (ValueError, TypeError, KeyError, yaml.YAMLError) as e:
            message = " ".join(str(e).split())
            raise RiseError(
                f"train.launch.config_file: {path} is not a valid accelerate config: {message}"
            ) from None

    @property
    def machines(self) -> int:
        return self.num_machines if self.num_machines is not None else self.cluster().num_machines

    @property
    def rank(self) -> int:
        """This machine's rank: `machine_rank`, else the config file's."""
        return self.machine_rank if self.machine_rank is not None else self.cluster().machine_rank

    def log_name(self) -> str:
        """launch.log on machine 0, launch-nodeH.log on machine H (one writer per file)."""
        return LOG if self.rank == 0 else f"launch-node{self.rank}.log"

    def command(self, config: TrainConfig) -> list[str]:
        """The `accelerate launch` command line that trains `config`."""
        argv = [sys.executable, "-m", "accelerate.commands.launch"]
        argv += ["--config_file", str(self.config_path), "--num_processes", str(self.num_processes)]
        port = self.main_process_port
        if port is None and self.machines == 1:
            port = free_port()
        for name in ("num_machines", "machine_rank", "main_process_ip", "mixed_precision"):
            if getattr(self, name) is not None:
                argv += [f"--{name}", str(getattr(self, name))]
        if port is not None:
            argv += ["--main_process_port", str(port)]
        return [*argv, "-m", "rise_llm", "train", *train_flags(config)]


def _yaml(value: Any) -> str:
    """`value` as a YAML flow scalar or collection, which `config.parse_value` reads back."""
    text = yaml.safe_dump(value, default_flow_style=True, width=sys.maxsize)
    return text.removesuffix("...\n").strip()


def train_flags(config: TrainConfig) -> list[str]:
    """`rise train` flags that give `config` back, every field that is set; checked by reading
    them through the command line's own parser (a value that would not survive is an error
    naming the field, before anything starts)."""
    from rise_llm.cli import build_parser, config_from_flags

    hints = typing.get_type_hints(TrainConfig)
    flags: list[str] = []
    for f in dataclasses.fields(config):
        value, hint = getattr(config, f.name), hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        if value is None:
            continue  # None is the default of every optional field
        if hint is bool:
            flags.append(flag if value else "--no-" + flag[2:])
        elif typing.get_origin(hint) is dict:
            flags += [f"{flag.removesuffix('s')}={k}={_yaml(v)}" for k, v in value.items()]
        elif typing.get_origin(hint) is list:
            flags += [flag, *(_yaml(v) for v in value)] if value else []
        elif hint is str or hint == str | None:
            flags.append(f"{flag}={value}")
        else:
            flags.append(f"{flag}={_yaml(value)}")
    args = build_parser().parse_args(["train", *flags])
    back = config_from_flags(TrainConfig, args, "train")
    differ = [
        f.name
        for f in dataclasses.fields(config)
        if getattr(back, f.name) != getattr(config, f.name)
    ]
    if differ:
        raise RiseError(
            f"train.{differ[0]}: {getattr(config, differ[0])!r} does not survive the `rise "
            f"train` command line of train.launch (read back as {getattr(back, differ[0])!r})"
        )
    return flags


_WRAPPERS = ("CalledProcessError", "ChildFailedError")
_EXCEPTION = re.compile(r"^[\w.]*(Error|Exception|Interrupt|Exit)\b.*")
_RANK = re.compile(r"^\[(default)?rank\d+\]:\s*")


def last_error(log: Path) -> str:
    """The line of `log` that says what went wrong: a `rise train: error:` line, else the last
    exception line that is not one of the launcher's own wrappers around a child's failure,
    else the last line."""
    text = log.read_text(errors="replace") if log.exists() else ""
    lines = [_RANK.sub("", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    for line in reversed(lines):
        if line.startswith("rise train: error:"):
            return line[-400:]
    for line in reversed(lines):
        if _EXCEPTION.match(line) and not any(w in line for w in _WRAPPERS):
            return line[-400:]
    return lines[-1][-400:] if lines else "(no output)"


def _signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(process.pid, sig)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the launch's process group, SIGKILL it after GRACE seconds."""
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(GRACE)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait()


def run(config: TrainConfig, launch: LaunchConfig) -> Path:
    """Train `config` under `accelerate launch` (or find it done); returns out/model."""
    out = Path(config.out)
    check_out(out, "train")
    done = check_settings(
        out, train_settings(config), "a trained model", name=TRAIN_RECORD, defaults=TrainConfig
    )
    if done:
        console.print(f"train: already done in {out}")
        return out / MODEL_DIR
    argv = launch.command(config)
    out.mkdir(parents=True, exist_ok=True)
    log = out / launch.log_name()
    pid_file = log.with_suffix(".pid")
    stop_stale(pid_file)  # a training left running by an earlier run whose watcher died too
    console.print(f"train: {shlex.join(argv)} (log: {log})", soft_wrap=True)
    watched = [sys.executable, "-m", "rise_llm.parent_watch", str(os.getpid()), *argv]
    with log.open("ab") as stream:
        stream.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n".encode())
        stream.flush()
        process = subprocess.Popen(
            watched,  # ends with this process, even one killed by SIGKILL
            stdin=subprocess.DEVNULL,
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: an interrupt stops all of it
        )
    pid_file.write_text(json.dumps({"group": process.pid, "argv": argv}) + "\n")
    try:
        status = process.wait()
    except BaseException:  # Ctrl-C, or SystemExit from a signal handler
        _stop(process)
        raise
    finally:
        _signal_group(process, signal.SIGKILL)  # any process that outlived the launcher
        pid_file.unlink(missing_ok=True)
    if status != 0:
        raise RiseError(
            f"train: accelerate launch exited with status {status}; see {log}: {last_error(log)}"
        )
    wait = RECORD_WAIT if launch.rank > 0 else 0.0  # machine 0's main process writes it
    deadline = time.monotonic() + wait
    while not (out / TRAIN_RECORD).exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    if not (out / TRAIN_RECORD).exists():
        raise RiseError(
            f"train: accelerate launch ended without writing {out / TRAIN_RECORD}; see {log}"
        )
    return out / MODEL_DIR
