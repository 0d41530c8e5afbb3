"""One self-contained Python file with a network's architecture, for model-zoo packages.

A bioimage.io ``pytorch_state_dict`` entry names an architecture source file and a callable in it;
consumers (bioimageio.core, ilastik, the bioimage.io napari plugin) import that one file with
torch and numpy installed, but not napari-refsr. Rather than keeping a second copy of the
network, :func:`architecture_source` concatenates the project's own modules — the network's
module and everything it imports from this package, in dependency order — with the
package-relative imports removed (their names are then defined earlier in the same file) and
``from .. import search as ts``-style module imports turned into a namespace of what is defined
so far. The result is checked: only allow-listed third-party imports, no name defined twice.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
from types import ModuleType

__all__ = ["architecture_source", "ENTRY_POINT"]

ENTRY_POINT = "refsr_network"  # the callable a package's rdf names: refsr_network(config, channels)
_ALLOWED_IMPORTS = {"__future__", "torch", "numpy", "math", "functools", "typing", "dataclasses",
                    "os", "re", "pathlib", "collections", "itertools", "warnings", "threading", "shutil"}
_PACKAGE = __name__.rpartition(".")[0]


def _relative_targets(module: ModuleType, node: ast.ImportFrom) -> list[tuple[str, str, str | None]]:
    """(absolute module, imported name, alias) per name of a package-relative import; the name
    is '' when a submodule itself is imported (``from .. import search as ts``)."""
    base = importlib.util.resolve_name("." * node.level + (node.module or ""), module.__package__)
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        try:
            importlib.import_module(sub)
            out.append((sub, "", alias.asname or alias.name))
        except ImportError:
            out.append((base, alias.name, alias.asname))
    return out


def _closure(module: ModuleType, seen: list[str]) -> None:
    """Depth-first: the package modules ``module`` needs, then ``module`` itself."""
    if module.__name__ in seen:
        return
    for node in ast.parse(inspect.getsource(module)).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            for target, _, _ in _relative_targets(module, node):
                _closure(importlib.import_module(target), seen)
    seen.append(module.__name__)


def _section(module: ModuleType, defined: dict[str, str]) -> str:
    """``module``'s source without its package imports, ``__future__`` import and ``__all__``."""
    source = inspect.getsource(module)
    lines = source.splitlines()
    drop: set[int] = set()
    extra: list[str] = []
    tree = ast.parse(source)
    for node in tree.body:
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        span = range(first - 1, node.end_lineno)
        if isinstance(node, ast.ImportFrom) and (node.level or node.module == "__future__"):
            drop.update(span)
            for target, name, alias in _relative_targets(module, node) if node.level else []:
                if not name:  # a module used as a namespace (``ts.search``)
                    extra.append(f"{alias} = _Namespace(globals())  # was: import of {target}")
                elif alias and alias != name:
                    extra.append(f"{alias} = {name}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            roots = {a.name.split(".")[0] for a in node.names} if isinstance(node, ast.Import) \
                else {node.module.split(".")[0]}
            if roots - _ALLOWED_IMPORTS:
                raise RuntimeError(f"{module.__name__} imports {sorted(roots - _ALLOWED_IMPORTS)}, which a "
                                   f"model-zoo consumer may not have")
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            drop.update(span)
        else:
            for name in _bound_names(node):
                if name in defined and defined[name] != module.__name__:
                    raise RuntimeError(f"{name!r} is defined in both {defined[name]} and {module.__name__}")
                defined[name] = module.__name__
    body = "\n".join(line for i, line in enumerate(lines) if i not in drop)
    header = f"# {'-' * 30} from {module.__name__}\n"
    return header + ("\n".join(extra) + "\n" if extra else "") + body.strip("\n") + "\n"


def _bound_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    targets = node.targets if isinstance(node, ast.Assign) else \
        [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
    return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]


def architecture_source(network_cls: type, config_cls: type) -> str:
    """The single-file source defining ``network_cls``, ``config_cls``, the two-input wrapper
    (:class:`napari_refsr.archs.two_input.TwoInputSR`) and ``refsr_network(config, channels)``."""
    from .archs import two_input

    order: list[str] = []
    for module in (inspect.getmodule(network_cls), inspect.getmodule(config_cls), two_input):
        _closure(module, order)
    defined: dict[str, str] = {}
    sections = [_section(importlib.import_module(name), defined) for name in order]
    head = (f'"""{network_cls.__name__} for bioimage.io: generated by napari-refsr from its modules '
            f'{", ".join(order)}.\n\nCall {ENTRY_POINT}(config, channels) for the network (see '
            f'TwoInputSR for its inputs and output)."""\n\nfrom __future__ import annotations\n\n'
            f"import types as _types\n\n\nclass _Namespace(_types.SimpleNamespace):\n"
            f'    """Stands in for an imported module: the names defined above it in this file."""\n\n'
            f"    def __init__(self, names: dict):\n"
            f"        super().__init__(**{{k: v for k, v in names.items() if not k.startswith('__')}})\n\n\n")
    tail = (f"\n\ndef {ENTRY_POINT}(config: dict, channels: int = 3) -> TwoInputSR:\n"
            f'    """The packaged network: {network_cls.__name__} of ``config`` (its architecture config) '
            f'behind the two-input interface."""\n'
            f"    return TwoInputSR({network_cls.__name__}({config_cls.__name__}(**config)), channels)\n")
    return head + "\n\n".join(sections) + tail
