"""`entropy-rl train` under accelerate's FSDP2 on CPU processes, for tests/test_dynamics.py (run with torchrun).

accelerate enables FSDP only on GPU-type backends: on a CPU-only machine a launch falls back to MULTI_CPU (DDP). For
the test this script makes accelerate take the 2 gloo CPU processes for a "MULTI_GPU" group on the CPU, which its
FSDP plugin then shards with fully_shard as on GPUs (FSDP2, transformer-layer wrap). It prints the state it got, so
the test can check that FSDP2 really ran.
"""

from __future__ import annotations

import os
import sys

import torch
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType


def _gloo_as_gpu_group(self, cpu=False, sagemaker_dp=False, backend=None):
    return "gloo", DistributedType.MULTI_GPU


def _cpu_device(self):
    self.device = torch.device("cpu")


def main(argv: list[str]) -> int:
    PartialState._prepare_backend = _gloo_as_gpu_group
    PartialState.set_device = _cpu_device
    os.environ.update(
        ACCELERATE_USE_FSDP="true",
        FSDP_VERSION="2",
        FSDP_AUTO_WRAP_POLICY="TRANSFORMER_BASED_WRAP",
        FSDP_RESHARD_AFTER_FORWARD="true",
        FSDP_STATE_DICT_TYPE="FULL_STATE_DICT",
    )
    torch.distributed.init_process_group("gloo")
    from entropy_rl.cli import main as entropy_rl

    code = entropy_rl(["train", *argv])
    state = AcceleratorState()
    print(f"accelerate state: {state.distributed_type.name} fsdp2={state.is_fsdp2}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
