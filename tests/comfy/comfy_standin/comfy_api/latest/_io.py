"""Stand-in for the V3 node schema (``comfy_api.latest.io``): just the types the nodes use."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


class Input:
    """An input socket or widget: ``id`` is the keyword ``execute`` receives."""

    io_type = "*"

    def __init__(self, id: str, display_name: str = None, optional: bool = False, tooltip: str = None,
                 lazy: bool = None, default: Any = None, **extra):
        self.id, self.display_name, self.optional = id, display_name, optional
        self.tooltip, self.lazy, self.default, self.extra = tooltip, lazy, default, extra


class Output:
    io_type = "*"

    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None,
                 is_output_list: bool = False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list


def _type(io_type: str, input_cls: type = Input):
    """A ComfyType: a class with ``io_type`` and nested ``Input``/``Output`` of that type."""
    ns = {"io_type": io_type}
    return type(io_type.title(), (), {"io_type": io_type,
                                      "Input": type("Input", (input_cls,), ns),
                                      "Output": type("Output", (Output,), ns)})


class _IntInput(Input):
    def __init__(self, id: str, display_name: str = None, optional: bool = False, tooltip: str = None,
                 lazy: bool = None, default: int = None, min: int = None, max: int = None, step: int = None,
                 **extra):
        super().__init__(id, display_name, optional, tooltip, lazy, default, **extra)
        self.min, self.max, self.step = min, max, step


class _ComboInput(Input):
    def __init__(self, id: str, options: list = None, display_name: str = None, optional: bool = False,
                 tooltip: str = None, lazy: bool = None, default: Any = None, **extra):
        super().__init__(id, display_name, optional, tooltip, lazy, default, **extra)
        self.options = options


Image = _type("IMAGE")
Mask = _type("MASK")
Int = _type("INT", _IntInput)
Combo = _type("COMBO", _ComboInput)


def Custom(io_type: str):
    """A type for objects passed between custom nodes (e.g. a model)."""
    return _type(io_type)


@dataclass
class Schema:
    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = None
    outputs: list = None
    hidden: list = None
    description: str = ""
    is_output_node: bool = False
    is_experimental: bool = False
    is_deprecated: bool = False
    not_idempotent: bool = False


class ComfyNode(ABC):
    @classmethod
    @abstractmethod
    def define_schema(cls) -> Schema: ...

    @classmethod
    @abstractmethod
    def execute(cls, **kwargs) -> "NodeOutput": ...


class NodeOutput:
    def __init__(self, *args: Any, ui: dict = None, expand: dict = None, block_execution: str = None):
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

    @property
    def result(self):
        return self.args if self.args else None

    def __getitem__(self, index):
        return self.args[index]
