"""The multi-scale model with `tsconv.models.fast.dropout` and `tsconv.models.fast.highway` on
CPU: a drop-in for `tsconv.models.multiscale.MultiScaleConv1d` (same parameters, same
state_dict)."""

from __future__ import annotations

from tsconv.models.fast.dropout import Dropout
from tsconv.models.fast.highway import NonzeroHighway
from tsconv.models.multiscale import MultiScaleConv1d


class FastDropoutMultiScaleConv1d(MultiScaleConv1d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.dropout = Dropout(self.dropout.p)
        if self.highway is not None:
            self.highway = NonzeroHighway(*self.highway.weight.shape[1:])
