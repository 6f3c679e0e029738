"""GEX weights an adjusted contract by its own deliverable (shares per contract), not by 100."""

from __future__ import annotations

import numpy as np

from marketswarm.agents.calc.gex import Book, gex_per_contract

NOW = 1_700_000_000_000_000_000  # 2023-11-14, before the contracts' expiry
SYMBOLS = ["SPY231215C00450000", "SPY231215P00450000"]


def book(deliverables: dict[str, int]) -> Book:
    b = Book.of("e", SYMBOLS, deliverables)
    b.gamma[:] = 0.02
    b.oi[:] = 1000
    return b


def test_an_adjusted_contract_is_weighted_by_its_shares() -> None:
    standard = gex_per_contract(book({}), 450.0, NOW)
    adjusted = gex_per_contract(book({SYMBOLS[0]: 150}), 450.0, NOW)
    np.testing.assert_allclose(standard, [0.02 * 1000 * 100 * 450**2 * 0.01, -0.02 * 1000 * 100 * 450**2 * 0.01])
    np.testing.assert_allclose(adjusted, [standard[0] * 1.5, standard[1]])
