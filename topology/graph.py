"""The agent graph as data: who reads and writes which stream. Checks and draws a list of agent specs
(the production list is agents/catalog.py); built without I/O."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from marketswarm.topology import streams
from marketswarm.topology.agent import AgentSpec


class GraphError(ValueError):
    """Raised when the agent graph is inconsistent: an unread output, a missing writer, a cycle."""


def validate(specs: Sequence[AgentSpec]) -> None:
    """Every read stream has a writer or is an ingress; group names are unique; no cycles."""
    names = [s.name for s in specs]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise GraphError(f"group names used twice: {sorted(dupes)}")
    written = {w.name for s in specs for w in s.writes}
    for s in specs:
        if not s.reads.ingress and s.reads.name not in written:
            raise GraphError(f"{s.name} reads {s.reads.name}, which no agent writes and no source feeds")
        for side in s.looks_up:
            if side.name not in written:
                raise GraphError(f"{s.name} looks up {side.name}, which no agent writes")
    # Cycle check over streams: edge reads -> writes for each agent.
    edges: dict[str, set[str]] = {}
    for s in specs:
        edges.setdefault(s.reads.name, set()).update(w.name for w in s.writes)
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in done:
            return
        if node in visiting:
            raise GraphError("cycle: " + " -> ".join([*path, node]))
        visiting.add(node)
        for nxt in edges.get(node, ()):
            visit(nxt, [*path, node])
        visiting.discard(node)
        done.add(node)

    for start in list(edges):
        visit(start, [])


def mermaid(specs: Iterable[AgentSpec]) -> str:
    """The graph as a Mermaid flowchart: streams are rounded nodes, agents are boxes, side inputs dotted."""
    lines = ["flowchart LR"]
    seen: set[str] = set()

    def node(stream: streams.StreamSpec) -> str:
        nid = "s_" + stream.name.replace(".", "_")
        if nid not in seen:
            seen.add(nid)
            lines.append(f'  {nid}(["{stream.template.format(u="U")}"])')
        return nid

    for s in specs:
        aid = "a_" + s.name.replace(".", "_").replace("-", "_")
        lines.append(f'  {aid}["{s.name}"]')
        lines.append(f"  {node(s.reads)} --> {aid}")
        for w in s.writes:
            lines.append(f"  {aid} --> {node(w)}")
        for side in s.looks_up:
            lines.append(f"  {node(side)} -. looked up .-> {aid}")
    return "\n".join(lines) + "\n"
