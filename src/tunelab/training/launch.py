"""Starting several training processes: torchrun for DDP, ``accelerate launch`` with a generated config for FSDP and
DeepSpeed ZeRO. tunelab does not run its own process manager."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import yaml

from tunelab.errors import ConfigError
from tunelab.io import write_text_atomic


def in_distributed_launch() -> bool:
    """Whether this process was started by torchrun / accelerate launch."""
    return "LOCAL_RANK" in os.environ or "RANK" in os.environ


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_config(
    distributed: str, nproc: int, nnodes: int, node_rank: int, master_addr: str, master_port: int, mixed_precision: str
) -> dict[str, Any]:
    """An accelerate config file's content for FSDP or DeepSpeed ZeRO-2/3."""
    base: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "num_machines": nnodes,
        "num_processes": nproc * nnodes,
        "machine_rank": node_rank,
        "main_process_ip": master_addr,
        "main_process_port": master_port,
        "mixed_precision": mixed_precision,
        "use_cpu": False,
        "rdzv_backend": "static",
        "same_network": True,
    }
    if distributed == "fsdp":
        base.update(
            distributed_type="FSDP",
            fsdp_config={
                "fsdp_version": 2,
                "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                "fsdp_reshard_after_forward": True,
                "fsdp_state_dict_type": "FULL_STATE_DICT",
                "fsdp_cpu_ram_efficient_loading": True,
                "fsdp_activation_checkpointing": False,
            },
        )
    else:
        stage = 2 if distributed == "deepspeed_zero2" else 3
        base.update(
            distributed_type="DEEPSPEED",
            deepspeed_config={
                "zero_stage": stage,
                "gradient_accumulation_steps": 1,
                "gradient_clipping": 1.0,
                "offload_optimizer_device": "none",
                "offload_param_device": "none",
                "zero3_init_flag": stage == 3,
                "zero3_save_16bit_model": stage == 3,
            },
        )
    return base


def launch_command(
    train_args: list[str],
    nproc: int,
    distributed: str,
    work_dir: Path,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str = "127.0.0.1",
    master_port: int | None = None,
    mixed_precision: str = "no",
) -> list[str]:
    """The command that runs ``tunelab train <train_args>`` in ``nproc`` processes per node.

    Raises:
        ConfigError: for FSDP/DeepSpeed without GPUs.
    """
    import torch

    port = master_port or free_port()
    if distributed == "ddp":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            f"--nnodes={nnodes}",
            f"--node_rank={node_rank}",
            f"--master_addr={master_addr}",
            f"--master_port={port}",
            "-m",
            "tunelab.cli",
            "train",
            *train_args,
        ]
    if not torch.cuda.is_available():
        raise ConfigError(
            f"environment.distributed: {distributed} needs GPUs; on CPU use ddp", field="environment.distributed"
        )
    config = accelerate_config(distributed, nproc, nnodes, node_rank, master_addr, port, mixed_precision)
    path = work_dir / f"accelerate_{distributed}.yaml"
    write_text_atomic(path, yaml.safe_dump(config, sort_keys=False))
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(path),
        "-m",
        "tunelab.cli",
        "train",
        *train_args,
    ]


def run_launched(command: list[str]) -> int:
    """Run the launcher command and return its exit code, passing SIGTERM on to it.

    A scheduler (or ``timeout``) signals only this process: without passing SIGTERM on, this process would die and
    leave the training processes running, unstopped and unsaved. SIGINT from a terminal already reaches the whole
    process group, so here it is only kept from killing this process before the others have stopped.
    """
    import signal
    import subprocess

    child = subprocess.Popen(command)

    def forward(signum: int, frame: Any) -> None:
        if signum == signal.SIGTERM:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code  # killed by a signal: the shell's 128 + signal number
