"""A stack of Linear + ReLU layers."""

from __future__ import annotations

import math

import torch
from torch import nn


class MLP(nn.Sequential):
    """Linear layers of the given widths (input first), ReLU after each but, optionally, the last.

    Built as ``nn.Sequential`` of Linear and ReLU, so state-dict keys are ``<i>.weight`` with the
    DLRM reference's numbering (Linear layers at even positions).
    """

    def __init__(self, widths: tuple[int, ...], relu_last: bool):
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(n_in, n_out))
            if relu_last or i < len(widths) - 2:
                layers.append(nn.ReLU())
        super().__init__(*layers)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Normal(0, sqrt(2 / (fan_in + fan_out))) weights, Normal(0, sqrt(1 / fan_out)) biases,
        as the DLRM reference initializes."""
        for layer in self:
            if isinstance(layer, nn.Linear):
                n_out, n_in = layer.weight.shape
                layer.weight.normal_(0.0, math.sqrt(2.0 / (n_in + n_out)), generator=generator)
                layer.bias.normal_(0.0, math.sqrt(1.0 / n_out), generator=generator)
