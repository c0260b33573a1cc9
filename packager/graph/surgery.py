"""Rewrites that turn a frozen graph into one fit for serving."""

from __future__ import annotations

from packager.graph.io_discovery import input_op_name
from packager.tf_runtime import tensorflow


def prune_for_serving(graph_def, output_tensor_names: list[str], *, clear_devices: bool = True):  # type: ignore[no-untyped-def]
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


def drop_unreachable_functions(graph_def) -> None:  # type: ignore[no-untyped-def]
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


def clear_function_devices(graph_def) -> None:  # type: ignore[no-untyped-def]
    """Clear the device pins inside the graph's function library (while/cond bodies, map_fn).

    A function body runs where its calling op is placed; a pin inside it would override that and
    fail on hosts without the device.
    """
    for function in graph_def.library.function:
        for node in function.node_def:
            node.device = ""


def repair_reference_ops(graph_def):  # type: ignore[no-untyped-def]
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

    replacements = {"RefSwitch": "Switch", "AssignSub": "Sub", "AssignAdd": "Add", "RefIdentity": "Identity",
                    "RefMerge": "Merge", "RefEnter": "Enter", "RefExit": "Exit", "RefNextIteration": "NextIteration"}
    if not any(n.op in replacements or n.op == "Assign" or any(a.type > 100 for a in n.attr.values())
               for n in graph_def.node):
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
