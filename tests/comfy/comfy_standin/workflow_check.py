"""Checks a ComfyUI workflow file against node definitions, as ComfyUI would before running it.

The node definitions ("catalogue") are the pack's own schemas plus ``core_nodes.json``, recorded
from a real ComfyUI server by ``record_core_nodes.py``; both use the recorded form
``{"display_name", "inputs": [{"name", "type", "required", "options"?, "min"?, "max"?}],
"outputs": [types], "output_node"}``.
"""

from __future__ import annotations

import json
from numbers import Real

from . import CORE_NODES

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"MarkdownNote", "Note"}  # nodes of the frontend: never sent to the server


def schema_spec(schema) -> dict:
    """A pack node's ``io.Schema`` in the recorded form."""
    inputs = []
    for i in schema.inputs:
        item = {"name": i.id, "type": i.io_type, "required": not i.optional}
        if getattr(i, "options", None) is not None:
            item["options"] = list(i.options)
        item.update({k: getattr(i, k) for k in ("min", "max") if getattr(i, k, None) is not None})
        inputs.append(item)
    return {"display_name": schema.display_name or schema.node_id, "inputs": inputs,
            "outputs": [o.io_type for o in schema.outputs], "output_node": schema.is_output_node}


def catalogue(pack_nodes) -> tuple[dict, str]:
    """The recorded core nodes plus ``pack_nodes`` (io.ComfyNode classes); and the ComfyUI version."""
    core = json.loads(CORE_NODES.read_text())
    nodes = dict(core["nodes"])
    for node in pack_nodes:
        schema = node.define_schema()
        nodes[schema.node_id] = schema_spec(schema)
    return nodes, core["comfyui_version"]


def _widgets(spec: dict) -> list[dict | None]:
    """The node's widget values in saved order; None for the upload button's value after an image combo."""
    out = []
    for item in spec["inputs"]:
        if item["type"] in WIDGET_TYPES:
            out.append(item)
            if item.get("image_upload"):
                out.append(None)
    return out


def _check_value(item: dict, value, files: set[str]) -> str | None:
    kind = item["type"]
    if kind == "COMBO":
        allowed = files if item.get("image_upload") else set(item.get("options", []))
        return None if value in allowed else f"{value!r} is not one of {sorted(allowed)}"
    if kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, Real) or (kind == "INT" and value != int(value)):
            return f"{value!r} is not an {kind}"
        if not item.get("min", value) <= value <= item.get("max", value):
            return f"{value} is outside {item.get('min')}..{item.get('max')}"
        return None
    if kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{value!r} is not a BOOLEAN"
    return None if isinstance(value, str) else f"{value!r} is not a STRING"


def check_ui(workflow: dict, nodes: dict, files: set[str]) -> list[str]:
    """Problems of a UI-format workflow (what the frontend saves and the template browser loads):
    unknown node types, inputs or outputs; links whose ends or types do not match; unconnected
    required inputs; widget values of the wrong count, type, range or choice (``files``: the image
    names LoadImage may use). An empty list means the graph is valid."""
    errors = []
    by_id = {n["id"]: n for n in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}
    if len(by_id) != len(workflow["nodes"]) or len(links) != len(workflow["links"]):
        errors.append("repeated node or link ids")
    if max(by_id) > workflow["last_node_id"] or max(links, default=0) > workflow["last_link_id"]:
        errors.append("last_node_id/last_link_id below the ids used")
    for node in workflow["nodes"]:
        where = f"node {node['id']} ({node['type']})"
        if node["type"] in FRONTEND_ONLY:
            continue
        spec = nodes.get(node["type"])
        if spec is None:
            errors.append(f"{where}: no such node type in the pack or ComfyUI's core")
            continue
        inputs = {i["name"]: i for i in spec["inputs"]}
        for slot in node.get("inputs", []):
            item = inputs.get(slot["name"])
            if item is None:
                if slot.get("widget") is None:  # the upload button is the frontend's own widget
                    errors.append(f"{where}: unknown input {slot['name']!r}")
            elif slot["type"] != item["type"]:
                errors.append(f"{where}: input {slot['name']!r} is {slot['type']}, the node has {item['type']}")
            if slot.get("link") is not None and slot["link"] not in links:
                errors.append(f"{where}: input {slot['name']!r} names a missing link {slot['link']}")
        connected = {s["name"] for s in node.get("inputs", []) if s.get("link") in links}
        for item in spec["inputs"]:
            if item["required"] and item["type"] not in WIDGET_TYPES and item["name"] not in connected:
                errors.append(f"{where}: required input {item['name']!r} is not connected")
        if [o["type"] for o in node.get("outputs", [])] != spec["outputs"]:
            errors.append(f"{where}: outputs {[o['type'] for o in node.get('outputs', [])]} != {spec['outputs']}")
        widgets, values = _widgets(spec), node.get("widgets_values", [])
        if len(values) != len(widgets):
            errors.append(f"{where}: {len(values)} widget values for {len(widgets)} widgets")
        for item, value in zip(widgets, values):
            problem = item and _check_value(item, value, files)
            if problem:
                errors.append(f"{where}: {item['name']}: {problem}")
    for link_id, src, src_slot, dst, dst_slot, kind in workflow["links"]:
        where = f"link {link_id}"
        if src not in by_id or dst not in by_id:
            errors.append(f"{where}: missing node {src if src not in by_id else dst}")
            continue
        outs, ins = by_id[src].get("outputs", []), by_id[dst].get("inputs", [])
        if src_slot >= len(outs) or dst_slot >= len(ins):
            errors.append(f"{where}: no slot {src_slot} on node {src} or {dst_slot} on node {dst}")
            continue
        if link_id not in (outs[src_slot].get("links") or []) or ins[dst_slot].get("link") != link_id:
            errors.append(f"{where}: the nodes' slots do not name it")
        if not outs[src_slot]["type"] == kind == ins[dst_slot]["type"] and "*" not in (kind, ins[dst_slot]["type"]):
            errors.append(f"{where}: {outs[src_slot]['type']} -> {ins[dst_slot]['type']} carried as {kind}")
    if not any(nodes.get(n["type"], {}).get("output_node") for n in workflow["nodes"]):
        errors.append("no output node: ComfyUI would run nothing")
    return errors


def ui_to_api(workflow: dict, nodes: dict) -> dict:
    """The API format (``POST /prompt``) of a UI-format workflow, as the frontend's "Export (API)"
    writes it: widget values by name, links as ``[node id, output slot]``, titles in ``_meta`` (the display
    name where the node keeps its default title)."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in sorted(workflow["nodes"], key=lambda n: n["id"]):
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) != 0:
            continue
        widgets = _widgets(nodes[node["type"]])
        inputs = {item["name"]: value for item, value in zip(widgets, node.get("widgets_values", [])) if item}
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, src, src_slot, *_ = links[slot["link"]]
                inputs[slot["name"]] = [str(src), src_slot]
        prompt[str(node["id"])] = {"inputs": inputs, "class_type": node["type"],
                                   "_meta": {"title": node.get("title") or nodes[node["type"]]["display_name"]}}
    return prompt
