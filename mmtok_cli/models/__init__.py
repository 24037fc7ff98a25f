"""Model-family adapters and the registry that picks one for a checkpoint."""

from .base import Adapter, VisionTokens
from .llava import LlavaAdapter
from .registry import ADAPTERS, adapter_class, load_adapter

__all__ = ["ADAPTERS", "Adapter", "LlavaAdapter", "VisionTokens", "adapter_class", "load_adapter"]
