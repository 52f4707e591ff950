"""Typed configurations, parsed once from DeePMD-kit style ``input.json`` dictionaries."""

from ._base import ConfigError
from .model import DescriptorConfig, FittingConfig, ModelConfig, RepflowConfig

__all__ = ["ConfigError", "DescriptorConfig", "FittingConfig", "ModelConfig", "RepflowConfig"]
