"""The training app as torchrun starts it, for tests/test_distributed_app.py:
``torchrun --nproc_per_node=2 tests/ddp_app_worker.py <overrides>``.

``SSVI_TEST_INTERRUPT_AT=n`` makes every rank stop (KeyboardInterrupt, as if killed) when it
reaches its n-th checkpoint, before writing it: the (n-1)-th is the last one on disk.
"""

import os
import sys

from pyro_ssvi import train
from pyro_ssvi.config import compose
from pyro_ssvi.training.distributed import Ranks

interrupt_at = int(os.environ.get("SSVI_TEST_INTERRUPT_AT", "0"))
if interrupt_at:
    real, calls = Ranks.checkpoint_fields, []

    def checkpoint_fields(self, loader):
        calls.append(1)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt("simulated kill")
        return real(self, loader)

    Ranks.checkpoint_fields = checkpoint_fields

try:
    train.run(compose(sys.argv[1:]), overrides=sys.argv[1:])
except KeyboardInterrupt:
    sys.exit(130)
