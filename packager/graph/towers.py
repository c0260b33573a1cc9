"""Multi-GPU tower graphs: detect them, and serve them merged, split or as a single tower.

Data-parallel training builds one copy of the model per GPU under sibling name scopes (Card_0/…,
Card_1/… or tower_N, clone_N, replica_N — any ``NAME_N`` family), sharing variables, each copy
with its own input placeholder, output and ``/gpu:N`` device. A family is recognised when the
sibling scopes hold structurally identical subgraphs (the same ops under the same relative names)
that read shared nodes outside them.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from packager.errors import SourceError, UsageError
from packager.graph.io_discovery import GraphIndex, OutputCandidate, discover_inputs, input_op_name
from packager.graph.surgery import clear_function_devices, unique_op_name
from packager.modes import TOWER_MODES, ServedTowerMode, TowerMode
from packager.tf_runtime import tensorflow

if TYPE_CHECKING:
    from tensorflow.core.framework.graph_pb2 import GraphDef

_SCOPE = re.compile(r"^(?P<base>[A-Za-z][A-Za-z0-9]*?)_?(?P<index>\d+)$")


@dataclass(frozen=True)
class Tower:
    """One tower: its scope, device, and its input and output tensors in role order."""

    scope: str
    device: str  # the device most of its ops were pinned to ("" when none)
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class TowerFamily:
    """Towers of one model, with the role (relative name) of each input and output."""

    towers: tuple[Tower, ...]
    input_roles: tuple[str, ...]
    output_roles: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.towers)

    def to_json(self) -> dict[str, object]:
        return {
            "count": self.count,
            "scopes": [t.scope for t in self.towers],
            "inputs": list(self.input_roles),
            "outputs": list(self.output_roles),
            "towers": [
                {"scope": t.scope, "device": t.device, "inputs": list(t.inputs), "outputs": list(t.outputs)}
                for t in self.towers
            ],
        }


def _scope_families(index: GraphIndex) -> dict[str, list[str]]:
    """{base: [scope_0, scope_1, ...]} for top-level scopes named BASE_N with N = 0..k, k >= 1."""
    scopes = {name.split("/", 1)[0] for name in index.nodes if "/" in name}
    families: dict[str, dict[int, str]] = {}
    for scope in scopes:
        match = _SCOPE.match(scope)
        if match:
            families.setdefault(match["base"], {})[int(match["index"])] = scope
    return {
        base: [members[i] for i in range(len(members))]
        for base, members in families.items()
        if len(members) >= 2 and sorted(members) == list(range(len(members)))
    }


def _structure(index: GraphIndex, scope: str) -> dict[str, str]:
    prefix = scope + "/"
    return {name[len(prefix) :]: node.op for name, node in index.nodes.items() if name.startswith(prefix)}


def _role(tensor_name: str, scope: str) -> str:
    """A tensor's name relative to its tower: "Card_1/probs:0" -> "probs"; outside the scope, its
    op name without a trailing tower index ("x_1:0" -> "x")."""
    op_name, _, output = tensor_name.partition(":")
    relative = op_name[len(scope) + 1 :] if op_name.startswith(scope + "/") else re.sub(r"_?\d+$", "", op_name)
    return relative if output in ("", "0") else f"{relative}:{output}"


def _device(index: GraphIndex, scope: str) -> str:
    devices = Counter(n.device for name, n in index.nodes.items() if name.startswith(scope + "/") and n.device)
    return devices.most_common(1)[0][0] if devices else ""


def detect_towers(index: GraphIndex, candidates: list[OutputCandidate]) -> TowerFamily | None:
    """Find a tower family among the graph's scopes, with each tower's inputs and outputs.

    Args:
        index: the (frozen) graph.
        candidates: its output candidates (io_discovery.output_candidates): a tower's outputs
            are the candidates inside its scope.

    Returns:
        The family, or None when the graph has no towers.
    """
    for base, scopes in sorted(_scope_families(index).items()):
        structures = [_structure(index, scope) for scope in scopes]
        if not structures[0] or any(s != structures[0] for s in structures[1:]):
            continue
        inside = [{n for n in index.nodes if n.startswith(scope + "/")} for scope in scopes]
        shared = {
            input_op_name(i)
            for members in inside
            for name in members
            for i in index.nodes[name].input
            if not any(input_op_name(i) in other for other in inside)
        }
        readers = [
            sum(1 for name in members for i in index.nodes[name].input if input_op_name(i) in shared)
            for members in inside
        ]
        if not shared or not all(readers):
            continue  # copies that share nothing are separate models, not towers
        towers = []
        for scope in scopes:
            outputs = tuple(t for c in candidates if c.op_name.startswith(scope + "/") for t in c.tensor_names)
            inputs = tuple(discover_inputs(index, list(outputs))) if outputs else ()
            towers.append(Tower(scope, _device(index, scope), inputs, outputs))
        if not towers[0].outputs:
            continue
        input_roles = tuple(_role(t, towers[0].scope) for t in towers[0].inputs)
        output_roles = tuple(_role(t, towers[0].scope) for t in towers[0].outputs)
        for tower in towers[1:]:
            if (
                tuple(_role(t, tower.scope) for t in tower.inputs) != input_roles
                or tuple(_role(t, tower.scope) for t in tower.outputs) != output_roles
            ):
                raise SourceError(
                    f"towers {towers[0].scope} and {tower.scope} (family {base}_N) have different inputs or "
                    "outputs: convert one with --towers single or name them with --inputs/--outputs"
                )
        return TowerFamily(tuple(towers), input_roles, output_roles)
    return None


def tower_device(position: int) -> str:
    """The device tower ``position`` is pinned to in a merged graph.

    "/device:*:N" names no device type: the placer takes device N of the best type present
    (GPU:N on a multi-GPU host, CPU:N with several logical CPUs) and, with soft placement, falls
    back to CPU:0 where there is no device N — one tower per device where devices exist, and a
    graph that still loads on a CPU-only host.
    """
    return f"/device:*:{position}"


def merge_towers(graph_def: GraphDef, family: TowerFamily) -> tuple[GraphDef, dict[str, str], dict[str, str]]:
    """One graph that serves the whole family through a single batch.

    New placeholders (named by input role) take the batch; it is split along dimension 0 in tower
    order — sizes differ by at most one; a tower beyond the batch size runs on the last row and
    contributes no rows — each tower runs on its slice on its own device, and each output role is
    the concatenation of the towers' outputs in order.

    Returns:
        (GraphDef, {input role: tensor name}, {output role: tensor name})
    """
    tf = tensorflow()
    v1 = tf.compat.v1
    taken = {node.name for node in graph_def.node}
    graph = tf.Graph()
    with graph.as_default():
        first = family.towers[0]
        template = tf.Graph()
        with template.as_default():
            tf.graph_util.import_graph_def(graph_def, name="")
        placeholders = {}
        for role, tensor_name in zip(family.input_roles, first.inputs):
            tensor = template.get_tensor_by_name(tensor_name)
            shape = tensor.shape.as_list() if tensor.shape.rank is not None else None
            if shape:
                shape[0] = None
            placeholders[role] = v1.placeholder(tensor.dtype, shape, name=unique_op_name(role, taken))
        lead = next(iter(placeholders.values()))
        count = family.count
        sizes = []
        slices: dict[str, list] = {role: [] for role in placeholders}
        with tf.name_scope("tfpack_tower_split"):
            batch = tf.shape(lead, out_type=tf.int32)[0]
            start = tf.constant(0, tf.int32)
            for i in range(count):
                size = (batch + (count - 1 - i)) // count
                # A tower never runs on zero rows: some ops cannot (a map_fn whose element shape
                # is not fully known). A tower left without rows of its own (batch < towers)
                # runs on the batch's last row, and its outputs are dropped below.
                rows = tf.minimum(tf.range(start, start + tf.maximum(size, 1)), tf.maximum(batch - 1, 0))
                for role, placeholder in placeholders.items():
                    slices[role].append(tf.gather(placeholder, rows, name=f"rows_{i}"))
                sizes.append(size)
                start = start + size
        input_map = {
            tower_input: slices[role][position]
            for position, tower in enumerate(family.towers)
            for role, tower_input in zip(family.input_roles, tower.inputs)
        }
        fetches = [t for tower in family.towers for t in tower.outputs]
        imported = tf.graph_util.import_graph_def(graph_def, input_map=input_map, return_elements=fetches, name="")
        by_name = dict(zip(fetches, imported))
        outputs: dict[str, str] = {}
        for index_, role in enumerate(family.output_roles):
            parts = [by_name[tower.outputs[index_]][: sizes[position]] for position, tower in enumerate(family.towers)]
            outputs[role] = tf.concat(parts, axis=0, name=unique_op_name(role.replace(":", "_"), taken)).name
        merged = graph.as_graph_def()
    scopes = {tower.scope: tower_device(position) for position, tower in enumerate(family.towers)}
    for node in merged.node:
        scope = node.name.split("/", 1)[0]
        node.device = scopes.get(scope, "")
    clear_function_devices(merged)  # bodies run on their tower's device
    return merged, {role: p.name for role, p in placeholders.items()}, outputs


def check_mode(mode: TowerMode, family: TowerFamily | None) -> ServedTowerMode:
    """Resolve ``--towers`` against what the graph has: auto means merge when there are towers."""
    if mode not in TOWER_MODES:
        raise UsageError(f"--towers must be one of {', '.join(TOWER_MODES)}, not {mode!r}")
    if family is None:
        if mode in ("merge", "split", "single"):
            raise UsageError(f"--towers {mode}: the graph has no tower family (Card_N, tower_N, clone_N, ... scopes)")
        return "off"
    return "merge" if mode == "auto" else mode
