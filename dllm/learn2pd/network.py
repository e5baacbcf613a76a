"""The filter network (spec LF §1.3): Linear(B -> H) -> ReLU -> Linear(H -> B), one logit per block slot.

At B = H = 32 this is the reference's "layer_2" model with 2,112 parameters. Other block lengths get their
own input and output width; the hidden width stays a setting (default 32).
"""

from __future__ import annotations

import torch
from torch import nn

TENSOR_NAMES = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")


class FilterNet(nn.Module):
    def __init__(self, block_length: int, hidden: int = 32):
        super().__init__()
        self.block_length, self.hidden = block_length, hidden
        self.fc1 = nn.Linear(block_length, hidden)
        self.fc2 = nn.Linear(hidden, block_length)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits [..., B] for confidence vectors [..., B]."""
        return self.fc2(torch.relu(self.fc1(features)))

    @torch.no_grad()
    def probability(self, features: torch.Tensor) -> torch.Tensor:
        """Acceptance probability sigmoid(logit) per slot, fp32."""
        return torch.sigmoid(self(features.to(self.fc1.weight.dtype))).float()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach().to("cpu", torch.float32).contiguous() for name, tensor in self.state_dict().items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "FilterNet":
        """Rebuild from saved tensors; the shapes must be a consistent B -> H -> B network (ValueError if not)."""
        missing = [n for n in TENSOR_NAMES if n not in tensors]
        if missing:
            raise ValueError(f"tensor '{missing[0]}' is missing")
        hidden, block = tensors["fc1.weight"].shape if tensors["fc1.weight"].dim() == 2 else (0, 0)
        shapes = {"fc1.weight": (hidden, block), "fc1.bias": (hidden,), "fc2.weight": (block, hidden),
                  "fc2.bias": (block,)}
        for name, shape in shapes.items():
            if tuple(tensors[name].shape) != shape or hidden < 1 or block < 1:
                raise ValueError(f"tensor '{name}' has shape {tuple(tensors[name].shape)}, expected {shape}")
        net = cls(block, hidden)
        net.load_state_dict({n: tensors[n].float() for n in TENSOR_NAMES})
        return net.eval()
