"""Black-Scholes against Hull's worked examples and py_vollib's 101-row reference table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from marketswarm.schemas import blackscholes as bs
from marketswarm.schemas.markettime import expiry_close_ns


def test_reference_table(real_data: Path) -> None:
    t = json.loads((real_data / "reference/py_vollib_bs_reference_table.json").read_text())
    cols = {c: i for i, c in enumerate(t["columns"])}
    data = np.array(t["data"], dtype=float)
    assert len(data) == 101
    s, k, r, tt, v = (data[:, cols[c]] for c in ("S", "K", "R", "t", "v"))
    ones, zeros = np.ones(len(s), bool), np.zeros(len(s), bool)

    def close(got: np.ndarray, col: str) -> None:
        np.testing.assert_allclose(got, data[:, cols[col]], rtol=1e-5, atol=1e-6, err_msg=col)

    close(bs.price(s, k, tt, r, v, ones), "bs_call")
    close(bs.price(s, k, tt, r, v, zeros), "bs_put")
    close(bs.delta(s, k, tt, r, v, ones), "CD")
    close(bs.delta(s, k, tt, r, v, zeros), "PD")
    close(bs.gamma(s, k, tt, r, v), "CG")
    close(bs.gamma(s, k, tt, r, v), "PG")


def test_hull_examples(real_data: Path) -> None:
    ref = json.loads((real_data / "reference/bs_textbook_values.json").read_text())
    a = ref["hull_call_42_40"]
    i, p = a["inputs"], a["precise"]
    d1, d2 = bs.d1_d2(i["S"], i["K"], i["T"], i["r"], i["sigma"])
    assert float(d1) == pytest.approx(p["d1"], abs=1e-9) and float(d2) == pytest.approx(p["d2"], abs=1e-9)
    assert float(bs.price(i["S"], i["K"], i["T"], i["r"], i["sigma"], True)) == pytest.approx(p["call"], abs=1e-8)
    assert float(bs.price(i["S"], i["K"], i["T"], i["r"], i["sigma"], False)) == pytest.approx(p["put"], abs=1e-8)
    assert round(float(bs.price(i["S"], i["K"], i["T"], i["r"], i["sigma"], True)), 2) == a["textbook"]["call"]
    b = ref["hull_call_49_50_greeks"]
    i, p = b["inputs"], b["precise"]
    args = (i["S"], i["K"], i["T"], i["r"], i["sigma"])
    assert float(bs.delta(*args, True)) == pytest.approx(p["delta"], rel=1e-9)
    assert float(bs.gamma(*args)) == pytest.approx(p["gamma"], rel=1e-9)


def test_expiry_convention() -> None:
    close = expiry_close_ns("2024-01-08")
    assert close == 1704747600 * 1_000_000_000  # 2024-01-08 16:00 EST = 21:00 UTC
    t = bs.years_to_expiry([close], close - 86400 * 1_000_000_000)
    assert float(t[0]) == pytest.approx(1 / 365)
    assert float(bs.years_to_expiry([close], close + 10**12)[0]) == bs.MIN_T_YEARS
