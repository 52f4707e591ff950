"""Freezing models to TorchScript for LAMMPS, and loading them back."""

from .freeze import EXPORTED_METHODS, freeze, freeze_checkpoint, load_frozen
from .load import load_model
from .metadata import FORMAT_VERSION, METADATA_FILE

__all__ = [
    "EXPORTED_METHODS",
    "FORMAT_VERSION",
    "METADATA_FILE",
    "freeze",
    "freeze_checkpoint",
    "load_frozen",
    "load_model",
]
