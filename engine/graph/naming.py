"""Node names that say which part of the graph a node belongs to: ``<model>/<part>/<node>``.

A profile of the exported graph (``benchmarks/graph_profile.py``) must tell the networks'
time from the pre- and post-processing around them, but runtimes report node names only.
The exporter records each node's torch module scope in its metadata (``namespace``), so the
names are rewritten from it once, after export: ``part`` is ``pre`` (resize, normalise),
``net`` (the network itself) or ``post`` (decode, NMS, masks, argmax). Runtimes keep these
names, or derive the names of nodes they fuse or insert from them, so the prefix survives.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx

PARTS = ("pre", "net", "post")
_NAMESPACE = "namespace"


def part_of(namespace: str, heads: Mapping[str, str]) -> tuple[str, str] | None:
    """``(model, part)`` for an exporter namespace such as
    ``": ...SegmentationGraph/heads.1: ...InstanceHead/heads.1.net: ...Yolo/..."``; None outside any head."""
    scopes = [entry.split(":", 1)[0].strip() for entry in namespace.split("/")]
    for i, scope in enumerate(scopes):
        if scope in heads:
            inner = scopes[i + 1] if i + 1 < len(scopes) else ""
            sub = inner[len(scope) + 1:].split(".", 1)[0] if inner.startswith(scope + ".") else ""
            return heads[scope], sub if sub in ("pre", "net") else "post"
    return None


def name_nodes(model: onnx.ModelProto, heads: Mapping[str, str]) -> onnx.ModelProto:
    """Prefix every node's name with its model and part; ``heads`` maps module scopes
    (``"heads.0"``) to model names. A node the exporter added without a scope (a cast it
    inserted) takes its producer's prefix: nodes come in topological order."""
    made_by: dict[str, str] = {}  # value name → prefix of the node that makes it
    for node in model.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        found = part_of(meta.get(_NAMESPACE, ""), heads)
        prefix = "/".join(found) if found else next(
            (made_by[i] for i in node.input if i in made_by), "graph/post")
        node.name = f"{prefix}/{node.name}"
        made_by.update(dict.fromkeys(node.output, prefix))
    return model
