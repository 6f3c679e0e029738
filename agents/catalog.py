"""The production topology: every agent kind, in data-flow order (topology/graph.py validates and draws it)."""

from __future__ import annotations

from marketswarm.topology.agent import AgentSpec


def agents() -> tuple[AgentSpec, ...]:
    """Every agent kind of the production topology, in data-flow order."""
    # Imported here, not at module level, so that `marketswarm topology` and tests of the runtime do
    # not pay for numpy/scipy imports they do not use.
    from marketswarm.agents.calc.gex import GEX_AGENT
    from marketswarm.agents.calc.strategies import CALC_AGENTS
    from marketswarm.agents.derive.pipelines import DERIVED_AGENTS
    from marketswarm.agents.hydrate.hydrator import HYDRATE
    from marketswarm.agents.normalize.normalizer import NORMALIZE
    from marketswarm.agents.publish.publisher import PUBLISH_AGENTS
    from marketswarm.agents.vigil.vigil import VIGIL_AGENTS

    return (NORMALIZE, HYDRATE, *CALC_AGENTS, GEX_AGENT, *PUBLISH_AGENTS, *DERIVED_AGENTS, *VIGIL_AGENTS)


def by_name(name: str) -> AgentSpec:
    """The agent kind called ``name``; KeyError naming the known ones if there is none."""
    for spec in agents():
        if spec.name == name:
            return spec
    raise KeyError(f"no agent named {name!r}; known: {', '.join(a.name for a in agents())}")
