"""Rewrites that turn a frozen graph into one fit for serving."""

from __future__ import annotations

from typing import TYPE_CHECKING

from packager.graph.io_discovery import input_op_name
from packager.tf_runtime import tensorflow

if TYPE_CHECKING:
    from tensorflow.core.framework.function_pb2 import FunctionDef
    from tensorflow.core.framework.graph_pb2 import GraphDef


def prune_for_serving(graph_def: GraphDef, output_tensor_names: list[str], *, clear_devices: bool = True) -> GraphDef:
    """Keep only what the outputs need, optionally without device pins.

    Pruning drops the saver, summaries and training ops a frozen graph may still carry. Device
    strings are cleared by default because tensorflow_model_server sets no soft placement: a
    graph pinned to /device:GPU:1 fails to load on a host without that GPU.

    Returns:
        A new GraphDef; the argument is not modified.
    """
    tf = tensorflow()
    pruned = tf.compat.v1.graph_util.extract_sub_graph(
        graph_def, sorted({input_op_name(n) for n in output_tensor_names})
    )
    if clear_devices:
        for node in pruned.node:
            node.device = ""
    clear_function_devices(pruned)
    drop_unreachable_functions(pruned)
    return pruned


def drop_unreachable_functions(graph_def: GraphDef) -> None:
    """Remove library functions no node calls (in place), with their gradient entries.

    extract_sub_graph keeps the whole library: a training graph's dataset functions
    (``_make_dataset_*``) and gradients would otherwise be written into the served model, and
    the op scan, which covers every function in a model's library, would rightly deny them.
    """
    from packager.graph.op_scan import reachable_functions

    keep = reachable_functions(graph_def)
    functions = [f for f in graph_def.library.function if f.signature.name in keep]
    gradients = [g for g in graph_def.library.gradient if g.function_name in keep and g.gradient_func in keep]
    if len(functions) == len(graph_def.library.function) and len(gradients) == len(graph_def.library.gradient):
        return
    del graph_def.library.function[:]
    graph_def.library.function.extend(functions)
    del graph_def.library.gradient[:]
    graph_def.library.gradient.extend(gradients)


def clear_function_devices(graph_def: GraphDef) -> None:
    """Clear the device pins inside the graph's function library (while/cond bodies, map_fn).

    A function body runs where its calling op is placed; a pin inside it would override that and
    fail on hosts without the device.
    """
    for function in graph_def.library.function:
        for node in function.node_def:
            node.device = ""


def repair_reference_ops(graph_def: GraphDef) -> GraphDef:
    """Rewrite the reference-variable ops old frozen graphs carry so that they import and run.

    freeze_graph on a TF1 BatchNorm graph leaves RefSwitch and AssignSub/AssignAdd (the moving
    average updates) reading constants of ref dtype; TensorFlow 2 refuses to import them ("Input 0
    of node ... was passed float from ... incompatible with expected float_ref"). As inference
    never updates the moving averages, the updates become plain arithmetic, an Assign passes its
    value through, and the switches become plain Switch; ref dtypes become their base type.

    Returns:
        A new GraphDef, or the argument itself when it needs no repair; the argument is never
        modified.
    """
    tensorflow()
    from tensorflow.core.framework import graph_pb2

    replacements = {
        "RefSwitch": "Switch",
        "AssignSub": "Sub",
        "AssignAdd": "Add",
        "RefIdentity": "Identity",
        "RefMerge": "Merge",
        "RefEnter": "Enter",
        "RefExit": "Exit",
        "RefNextIteration": "NextIteration",
    }
    if not any(
        n.op in replacements or n.op == "Assign" or any(a.type > 100 for a in n.attr.values()) for n in graph_def.node
    ):
        return graph_def  # nothing to repair: no copy of a possibly large graph
    repaired = graph_pb2.GraphDef()
    repaired.CopyFrom(graph_def)
    for node in repaired.node:
        if node.op == "Assign":
            # A training branch (batch norm under tf.cond(is_training)) that sets a population
            # statistic: at inference the value passes through; the variable, now a constant,
            # is only ordered before it.
            target, value = node.input[0], node.input[1]
            node.op = "Identity"
            del node.input[:]
            node.input.extend([value, "^" + target.split(":")[0]])
            for attr in ("use_locking", "validate_shape"):
                if attr in node.attr:
                    del node.attr[attr]
            continue
        if node.op in replacements:
            node.op = replacements[node.op]
            for attr in ("use_locking", "validate_shape"):
                if attr in node.attr:
                    del node.attr[attr]
        for attr_value in node.attr.values():
            if attr_value.type and attr_value.type > 100:  # DT_*_REF = base + 100
                attr_value.type = attr_value.type - 100
    return repaired


def unique_op_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name_1``, ``name_2``… — the first not in ``taken``, which it is added to."""
    candidate, counter = name, 1
    while candidate in taken:
        candidate = f"{name}_{counter}"
        counter += 1
    taken.add(candidate)
    return candidate


_RESOURCE_UPDATES = frozenset({"AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp"})


def drop_frozen_variable_updates(graph_def: GraphDef) -> GraphDef:
    """Remove resource-variable updates whose variable freezing turned into a constant.

    Keras 3 layers advance a seed generator's state on every call (an LSTM with dropout does,
    even at inference, where no draw is used); frozen, the update would write to a constant and
    TensorFlow refuses to import the graph. A served model never updates its weights: the updates
    go, and so do the control edges that ordered other ops after them. Whatever they fed would
    still be caught by the determinism proof.

    Returns:
        A new GraphDef, or the argument itself when there is nothing to drop.
    """
    tensorflow()
    from tensorflow.core.framework import graph_pb2

    nodes = {node.name: node for node in graph_def.node}
    frozen_updates = {
        node.name
        for node in graph_def.node
        if node.op in _RESOURCE_UPDATES
        and node.input
        and nodes.get(input_op_name(node.input[0])) is not None
        and nodes[input_op_name(node.input[0])].op == "Const"
    }
    if not frozen_updates:
        return graph_def
    kept = graph_pb2.GraphDef()
    kept.CopyFrom(graph_def)
    del kept.node[:]
    for node in graph_def.node:
        if node.name in frozen_updates:
            continue
        copy = kept.node.add()
        copy.CopyFrom(node)
        inputs = [i for i in node.input if not (i.startswith("^") and i[1:] in frozen_updates)]
        del copy.input[:]
        copy.input.extend(inputs)
    return kept


def repair_frozen_functions(graph_def: GraphDef) -> GraphDef:
    """Repair the function bodies (cond branches) of a graph frozen by TensorFlow's
    convert_variables_to_constants, which leaves two kinds of damage there:

    - a ReadVariableOp turned into an Identity keeps being referenced by its old output name
      (``ReadVariableOp:value:0``; an Identity's output is ``output``): the function fails at
      run time with "Return readvariableop -> ReadVariableOp:value:0 is not found";
    - a variable update (a batch norm's AssignMovingAvg in the training branch) now receives the
      frozen value instead of a resource: served models never update weights, so it goes, with
      the control edges that ordered other ops after it.

    Returns:
        A new GraphDef, or the argument itself when no function needs repair.
    """
    tensorflow()
    from tensorflow.core.framework import graph_pb2, types_pb2

    def renamed(reference: str, identities: set[str]) -> str:
        parts = reference.lstrip("^").split(":")
        if len(parts) == 3 and parts[0] in identities and parts[1] != "output":
            return f"{parts[0]}:output:{parts[2]}"
        return reference

    def needs_repair(function: FunctionDef) -> bool:
        identities = {n.name for n in function.node_def if n.op == "Identity"}
        references = [i for n in function.node_def for i in n.input] + list(function.ret.values())
        non_resources = {a.name for a in function.signature.input_arg if a.type != types_pb2.DT_RESOURCE}
        return any(renamed(r, identities) != r for r in references) or any(
            n.op in _RESOURCE_UPDATES and n.input and n.input[0].split(":")[0] in non_resources
            for n in function.node_def
        )

    if not any(needs_repair(f) for f in graph_def.library.function):
        return graph_def
    repaired = graph_pb2.GraphDef()
    repaired.CopyFrom(graph_def)
    for function in repaired.library.function:
        if not needs_repair(function):
            continue
        identities = {n.name for n in function.node_def if n.op == "Identity"}
        non_resources = {a.name for a in function.signature.input_arg if a.type != types_pb2.DT_RESOURCE}
        dropped = {
            n.name
            for n in function.node_def
            if n.op in _RESOURCE_UPDATES and n.input and n.input[0].split(":")[0] in non_resources
        }
        kept = [n for n in function.node_def if n.name not in dropped]
        for node in kept:
            inputs = [renamed(i, identities) for i in node.input if not (i.startswith("^") and i[1:] in dropped)]
            del node.input[:]
            node.input.extend(inputs)
        del function.node_def[:]
        function.node_def.extend(kept)
        for key, value in list(function.ret.items()):
            function.ret[key] = renamed(value, identities)
        for key in [k for k, v in function.control_ret.items() if v in dropped]:
            del function.control_ret[key]
        signature_controls = [c for c in function.signature.control_output if c not in function.control_ret]
        for name in signature_controls:
            function.signature.control_output.remove(name)
    return repaired
