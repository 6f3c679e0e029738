"""The agent graph is consistent: readers have writers, group names are unique, no cycles."""

from __future__ import annotations

import dataclasses

import pytest

from marketswarm.agents import catalog
from marketswarm.topology import graph, streams
from marketswarm.topology.agent import AgentSpec


def test_production_graph_is_valid() -> None:
    specs = catalog.agents()
    graph.validate(specs)
    names = [s.name for s in specs]
    assert names[:2] == ["normalize", "hydrate"]
    assert {"calc.single", "calc.vertical", "calc.butterfly", "calc.gex"} <= set(names)
    assert {f"publish.{s}" for s in streams.STRATEGIES} <= set(names)
    # Strategies are peers on the changes stream, and so is the trade flow: each its own group.
    assert sum(1 for s in specs if s.reads is streams.CHANGES) == 5
    # Every derived model is its own pipeline: its own group, the only writer of its diffs.
    for model in streams.DERIVED:
        writers = [s for s in specs if streams.DIFFS[model] in s.writes]
        assert len(writers) == 1 and writers[0].name.startswith("derive.")


def test_keys_carry_the_underlying_hash_tag() -> None:
    for spec in catalog.agents():
        for st in (spec.reads, *spec.writes):
            assert st.key("SPX").startswith("ms:{SPX}:")
    assert streams.dlq_key(streams.RAW.key("SPX")) == "ms:{SPX}:raw.v1.dlq"


def test_validation_catches_errors() -> None:
    normalize = catalog.by_name("normalize")
    orphan = dataclasses.replace(catalog.by_name("hydrate"), name="orphan", reads=streams.CHANGES, writes=())
    with pytest.raises(graph.GraphError, match="no agent writes"):
        graph.validate([orphan])
    with pytest.raises(graph.GraphError, match="used twice"):
        graph.validate([normalize, normalize])
    loop = AgentSpec(name="loop", reads=streams.EVENTS, writes=(streams.RAW,), make=normalize.make)
    with pytest.raises(graph.GraphError, match="cycle"):
        graph.validate([normalize, loop])
    blind = dataclasses.replace(normalize, name="blind", looks_up=(streams.DIFFS["gex"],))
    with pytest.raises(graph.GraphError, match="looks up diffs.gex"):
        graph.validate([blind])


def test_mermaid_names_every_agent_and_stream() -> None:
    text = graph.mermaid(catalog.agents())
    assert text.startswith("flowchart LR")
    for spec in catalog.agents():
        assert f'["{spec.name}"]' in text
    assert "ms:{U}:changes.v1" in text
    assert "s_diffs_gravity -. looked up .-> a_derive_best_flies" in text


def test_the_layers_diagram_shows_each_layer_with_its_modules_top_down() -> None:
    from marketswarm.ops.cli import layers_mermaid

    lines = layers_mermaid().splitlines()
    rows = {line.split("[", 1)[0].strip(): line for line in lines[1:5]}
    assert list(rows) == ["shell", "agents", "kernel", "schemas"]
    assert "runtime" in rows["kernel"] and "cli" not in rows["kernel"] and "cli" in rows["shell"]
    assert "catalog" in rows["agents"] and "codec" in rows["schemas"]
    assert lines[5:] == ["  shell --> agents", "  agents --> kernel", "  kernel --> schemas"]
