"""Validation before anything runs, and the graph algorithms it shares with the executor.

`validate` reports every problem at once (DESIGN.md section 6); each Problem
names the node id, class_type and input. Problem types:
empty_workflow, unknown_node_type, unknown_input, missing_input,
missing_link_source, bad_output_index, type_mismatch, link_required,
bad_value_type, value_out_of_range, bad_choice, cycle.
Shape errors (not a dict, a node without class_type) raise WorkflowError instead.
"""
from __future__ import annotations

import heapq
from typing import Any, Iterable, Mapping

from .errors import CycleError, Problem
from .workflow import Workflow, id_order_key, is_link, normalize_workflow

__all__ = ["Problem", "validate", "ancestors", "dependencies", "find_cycles", "topological_order",
           "types_compatible"]


def validate(workflow: Any, registry: Mapping) -> list[Problem]:
    """All problems of `workflow` against `registry` (class_type -> Node class); [] when runnable."""
    from ..nodes.base import widget_value_problem

    wf = normalize_workflow(workflow)
    problems: list[Problem] = []
    if not wf:
        problems.append(Problem("empty_workflow", "workflow has no nodes"))
    for node_id in sorted(wf, key=id_order_key):
        class_type = wf[node_id]["class_type"]
        inputs = wf[node_id]["inputs"]
        cls = registry.get(class_type)
        if cls is None:
            problems.append(Problem(
                "unknown_node_type",
                f"node {node_id}: unknown class_type {class_type!r} (run `arnodes nodes` to list node types)",
                node_id, class_type, details={"known": sorted(registry)}))
            continue
        spec = cls.SPEC
        for name, value in inputs.items():
            ispec = spec.input(name)
            where = f"node {node_id} ({class_type}) input {name!r}"
            if ispec is None:
                allowed = ", ".join(i.name for i in spec.inputs) or "(none)"
                problems.append(Problem("unknown_input", f"{where}: no such input; allowed inputs: {allowed}",
                                        node_id, class_type, name, {"value": value}))
            elif is_link(value):
                problem = _link_problem(wf, registry, value, ispec, where)
                if problem is not None:
                    kind, message, details = problem
                    problems.append(Problem(kind, message, node_id, class_type, name, details))
            else:
                problem = widget_value_problem(ispec, value)
                if problem is not None:
                    problems.append(Problem(problem[0], f"{where}: {problem[1]}", node_id, class_type, name,
                                            {"value": value, "type": ispec.type}))
        for ispec in spec.inputs:
            if ispec.required and ispec.name not in inputs:
                how = "a link from another node's output" if not ispec.is_widget else "a value"
                problems.append(Problem(
                    "missing_input",
                    f"node {node_id} ({class_type}) input {ispec.name!r}: required {ispec.type} input is "
                    f"missing; give it {how}", node_id, class_type, ispec.name, {"type": ispec.type}))
    for cycle in find_cycles(dependencies(wf)):
        named = " -> ".join(f"{n} ({wf[n]['class_type']})" for n in cycle)
        problems.append(Problem("cycle", f"nodes {named} form a cycle: each depends on the others' outputs",
                                cycle[0], wf[cycle[0]]["class_type"], details={"node_ids": cycle}))
    return problems


def _link_problem(wf: Workflow, registry: Mapping, link: list, ispec: Any,
                  where: str) -> tuple[str, str, dict] | None:
    src_id, index = link
    if src_id not in wf:
        return ("missing_link_source", f"{where}: linked to node {src_id}, which is not in the workflow",
                {"link": link})
    src_type = wf[src_id]["class_type"]
    src_cls = registry.get(src_type)
    if src_cls is None:
        return None  # reported as unknown_node_type on the source node
    outputs = src_cls.SPEC.outputs
    if not 0 <= index < len(outputs):
        listed = ", ".join(f"{i}: {o.name} ({o.type})" for i, o in enumerate(outputs)) or "none"
        return ("bad_output_index", f"{where}: linked to output {index} of node {src_id} ({src_type}), which "
                f"has outputs [{listed}]", {"link": link})
    out_type = outputs[index].type
    if not types_compatible(out_type, ispec.type):
        return ("type_mismatch", f"{where}: expects {ispec.type} but is linked to output {index} "
                f"({outputs[index].name}: {out_type}) of node {src_id} ({src_type})",
                {"link": link, "expected": ispec.type, "received": out_type})
    return None


def types_compatible(output_type: str, input_type: str) -> bool:
    """Link type rule: equal names, "*" on either side, or a STRING feeding a COMBO."""
    return (output_type == input_type or "*" in (output_type, input_type)
            or (input_type == "COMBO" and output_type == "STRING"))


def dependencies(wf: Workflow) -> dict[str, set[str]]:
    """{node_id: ids of the nodes it reads from}; links to absent nodes are left out."""
    return {nid: {str(v[0]) for v in node["inputs"].values() if is_link(v) and str(v[0]) in wf}
            for nid, node in wf.items()}


def find_cycles(deps: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components that are cycles (Kosaraju), each sorted, in a stable order."""
    finish: list[str] = []
    seen: set[str] = set()
    for start in sorted(deps, key=id_order_key):
        if start in seen:
            continue
        seen.add(start)
        stack = [(start, iter(sorted(deps[start], key=id_order_key)))]
        while stack:
            node, successors = stack[-1]
            for nxt in successors:
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, iter(sorted(deps[nxt], key=id_order_key))))
                    break
            else:
                stack.pop()
                finish.append(node)
    reverse: dict[str, set[str]] = {n: set() for n in deps}
    for node, ds in deps.items():
        for d in ds:
            reverse[d].add(node)
    cycles: list[list[str]] = []
    assigned: set[str] = set()
    for start in reversed(finish):
        if start in assigned:
            continue
        assigned.add(start)
        component, todo = [], [start]
        while todo:
            node = todo.pop()
            component.append(node)
            for nxt in reverse[node] - assigned:
                assigned.add(nxt)
                todo.append(nxt)
        if len(component) > 1 or start in deps[start]:
            cycles.append(sorted(component, key=id_order_key))
    return sorted(cycles, key=lambda c: id_order_key(c[0]))


def topological_order(deps: Mapping[str, set[str]], nodes: Iterable[str] | None = None) -> list[str]:
    """Kahn's algorithm over `nodes` (default all), ties broken by natural id order: deterministic."""
    todo = set(deps if nodes is None else nodes)
    indegree = {n: len(deps[n] & todo) for n in todo}
    users: dict[str, list[str]] = {n: [] for n in todo}
    for n in todo:
        for d in deps[n] & todo:
            users[d].append(n)
    ready = [(id_order_key(n), n) for n in todo if indegree[n] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, node = heapq.heappop(ready)
        order.append(node)
        for user in users[node]:
            indegree[user] -= 1
            if indegree[user] == 0:
                heapq.heappush(ready, (id_order_key(user), user))
    if len(order) < len(todo):
        stuck = sorted(todo - set(order), key=id_order_key)
        raise CycleError(f"nodes {', '.join(stuck)} depend on each other in a cycle", stuck)
    return order


def ancestors(deps: Mapping[str, set[str]], targets: Iterable[str]) -> set[str]:
    """`targets` plus every node they (transitively) read from."""
    out: set[str] = set()
    todo = list(targets)
    while todo:
        node = todo.pop()
        if node not in out:
            out.add(node)
            todo.extend(deps[node] - out)
    return out
