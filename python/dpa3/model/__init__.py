"""The DPA3 energy model (PyTorch, TorchScript-compatible ``forward_lower``)."""

from .model import EnergyModel

__all__ = ["EnergyModel"]
