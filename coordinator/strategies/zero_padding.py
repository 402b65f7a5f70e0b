"""Zero-padding (HetLoRA's padding rule): devices of lower rank vote zero for the components they lack.

Per module, over the updates that trained it (a device lacking the layer has no vote), each
device's factors are zero-padded to the reference rank ``R`` and the example-weighted mean is
taken. With ``w_i`` the weights of :meth:`FedAvg.weights` and ``C`` the updates that trained
the module and have the element's channel (the ``B`` row ``o``, the ``A`` column ``j``)::

    A[k, j] = sum_{i in C} w_i A_i[k, j] / sum_{i in C} w_i     (A_i[k, j] = 0 for k >= r_i)
    B[o, k] = sum_{i in C} w_i B_i[o, k] / sum_{i in C} w_i     (B_i[o, k] = 0 for k >= r_i)

Elements with ``C`` empty (a module nobody trained, a channel every voter pruned) keep the
current value. A component ``k`` is thus shrunk by the share of the weight whose rank stops
below it, as in HetLoRA (Cho et al., 2024), so the higher components, which fewer devices
train, move less.

**Why rank is padded but pruned channels are not.** A rank-``r_i`` device really has zero
beyond ``r_i`` in its own model: its ``dW_i = s * B_i @ A_i`` is exactly the padded product, so
a zero there is its statement about the update. A device with pruned channels never saw those
rows or columns: its model has no such output or input, so the lifted zero says nothing, and
counting it would drag every pruned channel toward zero in proportion to how often it is
pruned. Those elements are averaged only over the devices that have them.

This is :class:`~coordinator.strategies.fedavg.FedAvg` with a different notion of which
elements an update votes for; everything else is inherited. HetLoRA itself also weights the
devices by the size of their update instead of their examples: that is
:mod:`~coordinator.strategies.hetlora`.
"""

from __future__ import annotations

import numpy as np

from coordinator.strategies.base import ClientUpdate, Tensors, coverage_by_key, register
from coordinator.strategies.fedavg import FedAvg


@register
class ZeroPadding(FedAvg):
    """FedAvg in which a device votes zero for the rank components above its own rank."""

    name = "zero_padding"

    def coverage(self, update: ClientUpdate, current: Tensors) -> dict[str, np.ndarray]:
        """Per key of ``current``: all rank components of the channels ``update`` has, in its modules."""
        return coverage_by_key(update, current, pad_rank=True)
