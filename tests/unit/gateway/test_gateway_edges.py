"""The gateway's edges as pure logic: admission per address and in total, the sign-in rate limit,
a tab's feed list, and the exposure check."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import SecretStr

from marketswarm.agents.gateway.access import ExposedWithoutTokenError, check_exposure
from marketswarm.agents.gateway.feeds import MAX_TAB_FEEDS, TabRequestError, cancel_all, parse_tab, parse_version
from marketswarm.agents.gateway.limits import Admission, Attempts
from marketswarm.topology import streams
from marketswarm.topology.settings import Settings

MODELS = set(streams.MODELS)


def test_admission_caps_each_address_and_the_total_and_frees_on_release() -> None:
    a = Admission(total=5, per_address=2)
    assert [a.admit("10.0.0.1") for _ in range(3)][:2] == [None, None]
    assert a.admit("10.0.0.1") is not None and "your address" in str(a.admit("10.0.0.1"))
    assert a.admit("10.0.0.2") is None and a.admit("10.0.0.2") is None
    assert a.admit("10.0.0.3") is None
    assert "live connections already" in str(a.admit("10.0.0.4"))  # 5 in all
    a.release("10.0.0.1")
    assert a.admit("10.0.0.1") is None  # its slot is free again
    for address in ("10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.2", "10.0.0.3"):
        a.release(address)
    assert a.open == 0 and a.by_address == {}


def test_sign_in_attempts_are_limited_per_address_in_a_sliding_window() -> None:
    limit = Attempts(limit=3, window_s=60, max_addresses=2)
    assert [limit.allow("a", now=t) for t in (0, 1, 2)] == [None, None, None]
    wait = limit.allow("a", now=3)
    assert wait == pytest.approx(57)  # until the first attempt leaves the window
    assert limit.allow("b", now=3) is None  # another address has its own budget
    assert limit.allow("a", now=60.5) is None  # the first attempt has left the window
    limit.allow("c", now=61)  # a third address: the least recently seen is forgotten
    assert set(limit.seen) == {"a", "c"}


def test_a_tab_names_its_feeds_with_their_resume_points() -> None:
    assert parse_tab("SPX:butterfly@12, spx:market_mode,NDX:gex@0", MODELS) == [
        ("SPX", "butterfly", 12),
        ("SPX", "market_mode", -1),
        ("NDX", "gex", 0),
    ]
    bad = ["", ",", "SPX", "SPX:nosuch", ":gex", "SPX:gex@", "SPX:gex@-1", "SPX:gex@1x", "SPX:gex,SPX:gex"]
    bad.append(",".join(f"U{i}:gex" for i in range(MAX_TAB_FEEDS + 1)))
    for spec in bad:
        with pytest.raises(TabRequestError):
            parse_tab(spec, MODELS)
    assert parse_version("9" * 19) == -1 and parse_version("²") == -1 and parse_version("42") == 42


def test_only_loopback_may_go_without_a_token_unless_told() -> None:
    for host in ("127.0.0.1", "::1", "localhost"):
        check_exposure(Settings(gateway_host=host))
    for host in ("0.0.0.0", "10.1.2.3", "::"):
        with pytest.raises(ExposedWithoutTokenError, match="--no-auth"):
            check_exposure(Settings(gateway_host=host))
        with pytest.raises(ExposedWithoutTokenError):
            check_exposure(Settings(gateway_host=host, api_token=SecretStr("")))  # empty is none
        check_exposure(Settings(gateway_host=host, api_token=SecretStr("t")))
        check_exposure(Settings(gateway_host=host, gateway_no_auth=True))


async def test_cancel_all_cancels_again_a_task_that_absorbed_its_cancellation() -> None:
    """As redis-py can (a cancellation landing inside a command completes the command instead): the
    first cancellation is swallowed, the task goes on, and cancel_all still ends it."""
    absorbed = 0

    async def stubborn() -> None:
        nonlocal absorbed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                absorbed += 1
                if absorbed == 1:
                    continue  # swallowed, as the command that absorbed it returned normally
                raise

    tasks = [asyncio.create_task(stubborn()), asyncio.create_task(asyncio.sleep(3600))]
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await cancel_all(tasks)
    assert absorbed == 2 and all(t.done() for t in tasks)
