"""The trade condition table: which prints count toward volume and which set the last price."""

from __future__ import annotations

from marketswarm.agents.hydrate.hydrator import newness
from marketswarm.schemas.trade_conditions import CANCELLATIONS, CONDITIONS, effect


def test_the_table_covers_the_provider_options_set() -> None:
    assert sorted(CONDITIONS) == [*range(201, 211), 219, *range(227, 249)]
    assert CANCELLATIONS == {201, 203, 205, 207}
    assert len({c.code for c in CONDITIONS.values()}) == len(CONDITIONS)  # one OPRA type each


def test_what_each_kind_of_print_does() -> None:
    assert effect([]) == effect([209]) and effect([209]).label == "regular"
    for cancel in CANCELLATIONS:
        e = effect([cancel])
        assert (e.volume, e.last, e.label) == (False, False, "cancel")
    late_in_sequence, out_of_sequence = effect([204]), effect([202])
    assert (late_in_sequence.volume, late_in_sequence.last) == (True, True)
    assert (out_of_sequence.volume, out_of_sequence.last, out_of_sequence.label) == (True, False, "no_last")
    spread_leg = effect([232])  # a multi-leg print: real volume, a package price
    assert (spread_leg.volume, spread_leg.last) == (True, False)
    compression = effect([247])
    assert (compression.volume, compression.last, compression.label) == (False, False, "excluded")
    # Every condition must allow it; an unknown code is counted and treated as regular.
    assert effect([219, 202]).last is False and effect([209, 201]).label == "cancel"
    unknown = effect([999])
    assert (unknown.volume, unknown.last, unknown.label) == (True, True, "unknown")


def test_a_receive_time_never_beats_a_provider_time() -> None:
    provider_old = newness(1_000, 0)
    received_new = newness(9_000_000_000_000_000_000, 99, rx_time=True)
    assert received_new < provider_old  # however much later it was received
    assert newness(2_000, rx_time=True) > newness(1_000, rx_time=True)  # among themselves, by time
    assert newness(1_000, 2) > newness(1_000, 1)  # then by sequence
    assert len(newness(10**25, 2**64)) == len(newness(0)) == 32  # clamped to the width
