"""The one place that chooses the fast CPU kernels over the reference modules."""

from __future__ import annotations

import torch


class CPURoute:
    """Mixin for a drop-in of a reference module (listed first in the bases): `forward` runs
    the subclass's `forward_cpu` for a CPU input, the reference `forward` otherwise.

    Under torch.compile the reference runs on CPU too: the compiler fuses the composed modules
    itself, cannot trace the numpy bits of the fast dropout, and torch 2.11's compiler got a
    parameter gradient of the time-major block's hand-written backward wrong."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and not torch.compiler.is_compiling():
            return self.forward_cpu(x)
        return super().forward(x)

    def forward_cpu(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
