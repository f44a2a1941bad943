"""Run `loratune` with accelerate's FSDP on CPU processes (gloo), for tests/test_fsdp.py.

accelerate 1.15 turns `--use_fsdp` into FSDP only on accelerators (state.py lists MULTI_GPU, MULTI_XPU, ... but not
MULTI_CPU), so on CPU it silently trains with DDP. torch's `fully_shard` itself runs on CPU over gloo; this makes
the one choice accelerate skips on CPU, and everything after it (accelerate's fsdp2_prepare_model, torch's FSDP2,
loratune's gathers) runs as it does on GPUs. Usage: `accelerate launch --use_fsdp ... tests/fsdp_on_cpu.py ARGS`.
"""

import sys

from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType

_init = AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


AcceleratorState.__init__ = _init_with_fsdp_on_cpu

if __name__ == "__main__":
    from loratune.cli import main

    sys.exit(main(sys.argv[1:]))
