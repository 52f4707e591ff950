"""Freezing models to TorchScript for LAMMPS, and loading them back."""

from .freeze import EXPORTED_METHODS, freeze, load_frozen
from .metadata import FORMAT_VERSION, METADATA_FILE

__all__ = ["EXPORTED_METHODS", "FORMAT_VERSION", "METADATA_FILE", "freeze", "load_frozen"]
