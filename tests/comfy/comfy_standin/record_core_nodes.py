"""Record the node list of a running ComfyUI server for the example-workflow tests.

    python tests/comfy/comfy_standin/record_core_nodes.py http://127.0.0.1:8188

Reads ``GET /object_info`` and ``GET /system_stats`` and writes ``core_nodes.json`` beside this file:
for every node of ComfyUI itself (``nodes``, ``comfy_extras``; custom and API nodes left out) its
display name, inputs in order (name, type, required or not, combo options, min/max) and output
types, plus the ComfyUI version. Only what a workflow check needs, so the file stays small and diffs stay readable.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

OUT = Path(__file__).resolve().parent / "core_nodes.json"
CORE_MODULES = ("nodes", "comfy_extras")
LIMITS = ("min", "max")


def _get(url: str):
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.load(response)


def _input(name: str, spec: list, required: bool) -> dict:
    kind, options = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    item = {"name": name, "required": required}
    if isinstance(kind, list) or kind == "COMBO":
        item["type"] = "COMBO"
        if options.get("image_upload"):  # the files in ComfyUI/input: not the node's, not recorded
            item["image_upload"] = True
        else:
            item["options"] = kind if isinstance(kind, list) else options.get("options", [])
    else:
        item["type"] = kind
    item.update({k: options[k] for k in LIMITS if k in options})
    return item


def trim(info: dict) -> dict:
    """The part of one node's ``/object_info`` entry the workflow checks use."""
    order = info.get("input_order", {})
    inputs = []
    for group, required in (("required", True), ("optional", False)):
        specs = info.get("input", {}).get(group, {})
        inputs += [_input(name, specs[name], required) for name in order.get(group, list(specs))]
    return {"display_name": info.get("display_name") or info["name"], "inputs": inputs,
            "outputs": info.get("output", []), "output_node": info.get("output_node", False)}


def main(base: str) -> None:
    base = base.rstrip("/")
    nodes = _get(base + "/object_info")
    version = _get(base + "/system_stats")["system"]["comfyui_version"]
    core = {name: trim(info) for name, info in sorted(nodes.items())
            if info.get("python_module", "").split(".")[0] in CORE_MODULES}
    lines = [f"{json.dumps(name)}: {json.dumps(spec, ensure_ascii=False)}" for name, spec in core.items()]
    OUT.write_text(f'{{"comfyui_version": {json.dumps(version)}, "nodes": {{\n' + ",\n".join(lines) + "\n}}\n")
    print(f"{len(core)} core nodes of ComfyUI {version} -> {OUT}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8188")
