"""An automation as a drawable graph: its steps in layers, with how many contacts took each branch.

The layout is computed here, not in the browser, so the same definition always draws the same
picture (and a test can check it). Steps are placed in layers by following
:func:`~percorso.automation.definition.successors` from the first step — each step one layer
below the deepest step leading to it, ignoring the edges that close a loop — and ordered within a
layer by where their predecessors sit, so branches stay under the step they leave. Each edge to
``exit`` gets its own end node right below the step it leaves.

Example::

    graph = step_graph(automation, automation_stats(store, automation.key)["steps"])
    graph["nodes"][0]  # {"id": "pause", "kind": "wait", "layer": 0, "x": 0.0, "y": 0.0, ...}
"""

from __future__ import annotations

from typing import Any

from percorso.automation.definition import ACTION_KINDS, EXIT, WAIT_KINDS, Automation, successors

X_GAP = 210.0
Y_GAP = 110.0

#: Outcomes that leave a contact at the step (or take them out): not a pass along "next".
STAYED = frozenset({"waiting", "held", "goal", "holdout", "exit", "entered"})


def group_of(kind: str) -> str:
    """How a step is drawn: waits, decisions, actions and exits look different."""
    if kind in WAIT_KINDS:
        return "wait"
    if kind in ("condition", "split", "holdout"):
        return "decision"
    if kind in ACTION_KINDS:
        return "action"
    return "exit"


def edge_count(label: str, outcomes: dict[str, int]) -> int:
    """Enrollments that left a step along the edge ``label``, from the step's logged outcomes.

    A labelled edge (``then``, ``otherwise``, ``timed_out``, a split branch) is logged under its
    own name; ``next`` is every outcome that moved the contact on (``waited``, ``treatment``, an
    action's ``queued``/``suppressed``/``failed`` …).
    """
    if label == "next":
        return sum(n for outcome, n in outcomes.items() if outcome not in STAYED)
    return int(outcomes.get(label, 0))


def layers(automation: Automation) -> dict[str, int]:
    """The layer of every step: the longest path to it from the first step, loops cut."""
    steps = automation.steps
    index = automation.step_index()
    forward: dict[int, list[int]] = {i: [] for i in range(len(steps))}
    state = [0] * len(steps)  # 0 unseen, 1 on the current path, 2 done
    order: list[int] = []  # post-order
    for root in range(len(steps)):  # the first step, then anything it cannot reach
        if state[root]:
            continue
        state[root] = 1
        stack = [(root, iter(_targets(automation, root, index)))]
        while stack:
            node, pending = stack[-1]
            nxt = next(pending, None)
            if nxt is None:
                state[node] = 2
                order.append(node)
                stack.pop()
            elif state[nxt] == 0:
                forward[node].append(nxt)
                state[nxt] = 1
                stack.append((nxt, iter(_targets(automation, nxt, index))))
            elif state[nxt] == 2:
                forward[node].append(nxt)
            # state 1: the edge closes a loop; it is drawn but does not push the target down
    layer = [0] * len(steps)
    for node in reversed(order):  # a topological order of the forward edges
        for nxt in forward[node]:
            layer[nxt] = max(layer[nxt], layer[node] + 1)
    return {step.id: layer[i] for i, step in enumerate(steps)}


def _targets(automation: Automation, position: int, index: dict[str, int]) -> list[int]:
    out: list[int] = []
    for edge in successors(automation, position):
        target = index.get(edge.target)
        if target is not None and target not in out:
            out.append(target)
    return out


def step_graph(automation: Automation, step_stats: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Nodes (steps and end points) with x/y, and edges with the count and share that took them.

    ``step_stats`` is ``automation_stats(...)["steps"]``; without it every count is 0.
    """
    by_id = {s["id"]: s for s in step_stats or []}
    depth = layers(automation)
    nodes: list[dict[str, Any]] = []
    links: list[dict[str, Any]] = []
    for position, step in enumerate(automation.steps):
        stats = by_id.get(step.id, {})
        entered = int(stats.get("entered") or 0)
        nodes.append(
            {
                "id": step.id,
                "kind": step.kind,
                "group": group_of(step.kind),
                "layer": depth[step.id],
                "position": position,
                "entered": entered,
                "now": int(stats.get("now") or 0),
                "goal": int((stats.get("outcomes") or {}).get("goal", 0)),
            }
        )
        outcomes = {str(k): int(v) for k, v in (stats.get("outcomes") or {}).items()}
        for edge in successors(automation, position):
            target = edge.target
            if target == EXIT:
                target = f"{EXIT}:{step.id}:{edge.label}"
                nodes.append(
                    {
                        "id": target,
                        "kind": EXIT,
                        "group": "end",
                        "layer": depth[step.id] + 1,
                        "position": position,
                        "entered": 0,
                        "now": 0,
                        "goal": 0,
                    }
                )
            count = edge_count(edge.label, outcomes)
            links.append(
                {
                    "source": step.id,
                    "target": target,
                    "label": edge.label,
                    "count": count,
                    "share": round(count / entered, 4) if entered else None,
                    "loop": target in depth and depth[target] <= depth[step.id],
                }
            )
    ends = {n["id"]: n for n in nodes if n["group"] == "end"}
    for link in links:
        if link["target"] in ends:
            ends[link["target"]]["entered"] = link["count"]
    _place(nodes, links)
    return {"nodes": nodes, "links": links, "layers": 1 + max(n["layer"] for n in nodes)}


def _place(nodes: list[dict[str, Any]], links: list[dict[str, Any]]) -> None:
    """x and y for every node: layers top to bottom, each ordered under its predecessors."""
    parents: dict[str, list[str]] = {}
    for link in links:
        if not link["loop"]:
            parents.setdefault(link["target"], []).append(link["source"])
    x: dict[str, float] = {}
    for layer in range(1 + max(n["layer"] for n in nodes)):
        row = [n for n in nodes if n["layer"] == layer]

        def key(node: dict[str, Any]) -> tuple[float, int, str]:
            above = [x[p] for p in parents.get(node["id"], []) if p in x]
            return (sum(above) / len(above) if above else 0.0, node["position"], node["id"])

        row.sort(key=key)
        for slot, node in enumerate(row):
            node["x"] = round((slot - (len(row) - 1) / 2) * X_GAP, 1)
            node["y"] = round(layer * Y_GAP, 1)
            x[node["id"]] = node["x"]
