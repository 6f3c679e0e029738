"""A person's mistakes at the command line: one clear line and a non-zero exit, never a traceback.

Every command runs inside :class:`Cli`. A :class:`Mistake` raised anywhere below carries the line to
print and the exit status; the mistakes that arrive as other exceptions (a file that is not there, a
server that does not answer, a symbol that is not OCC) are explained by :func:`explain`. Anything else
is a bug: one line naming it, and the traceback only with ``--debug`` (anywhere on the command line)
or ``MARKETSWARM_LOG_LEVEL=DEBUG``.
"""

from __future__ import annotations

import os
from typing import Any

import typer
from redis import exceptions as redis_errors
from typer.core import TyperGroup

from marketswarm.agents import catalog
from marketswarm.schemas.occ import SymbolError
from marketswarm.topology.agent import AgentSpec
from marketswarm.topology.settings import ModelSettingsError, mask_url

DEBUG_FLAG = "--debug"
USAGE = 2  # the command line asked for something that cannot be (click's own status for usage errors)
FAILED = 1  # a well-formed request that could not be done (a server down, nothing found)


class Mistake(Exception):
    """A mistake the user can fix. ``str(self)`` says what and how; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = USAGE) -> None:
        super().__init__(message)
        self.code = code


class _State:
    debug = False
    redis_url: str | None = None  # the server the command talks to, once resolved (masked in messages)


URL_SCHEMES = ("redis://", "rediss://", "unix://")


def set_redis_url(url: str, name: str = "MARKETSWARM_REDIS_URL") -> None:
    """Check the URL of the server a command uses (``name`` says where it came from) and remember
    it, so that it can be named if it does not answer."""
    if not url.startswith(URL_SCHEMES):
        raise Mistake(f"{name} {mask_url(url)!r} is not a Redis URL: it starts with {', '.join(URL_SCHEMES)}")
    _State.redis_url = url


def agent_spec(name: str) -> AgentSpec:
    """The agent kind called ``name``, or the mistake naming the kinds there are."""
    try:
        return catalog.by_name(name)
    except KeyError as exc:
        known = ", ".join(a.name for a in catalog.agents())
        raise Mistake(f"unknown agent {name!r}: one of {known}") from exc


def debugging() -> bool:
    return _State.debug or os.environ.get("MARKETSWARM_LOG_LEVEL", "").upper() == "DEBUG"


def explain(exc: BaseException) -> tuple[str, int]:
    """The line to print for ``exc`` and the exit status."""
    url = mask_url(_State.redis_url) if _State.redis_url else "the configured Redis"
    match exc:
        case Mistake():
            return str(exc), exc.code
        case FileNotFoundError() | IsADirectoryError() | NotADirectoryError() | PermissionError():
            return f"{exc.filename}: {exc.strerror.lower() if exc.strerror else exc}", USAGE
        case redis_errors.AuthenticationError() | redis_errors.AuthorizationError():
            return f"Redis at {url} refused the credentials ({exc}): check MARKETSWARM_REDIS_URL", FAILED
        case redis_errors.ConnectionError() | redis_errors.TimeoutError() | redis_errors.RedisClusterException():
            said = str(exc).rstrip(".")
            return (
                f"Redis at {url} does not answer ({said}): start it, or set MARKETSWARM_REDIS_URL to one that runs",
                FAILED,
            )
        case redis_errors.ResponseError() if str(exc).startswith(("NOAUTH", "WRONGPASS", "NOPERM")):
            return f"Redis at {url} refused the command ({exc}): check MARKETSWARM_REDIS_URL", FAILED
        case SymbolError():
            return f"not an OCC option symbol: {exc}", USAGE
        case ModelSettingsError():
            return str(exc), USAGE
        case OSError():
            return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), FAILED
    return f"unexpected {type(exc).__name__}: {exc} (run again with --debug for the traceback)", FAILED


def one_line(text: str) -> str:
    return " ".join(text.split())


# What the command line machinery raises on purpose (an exit, an abort, a usage error): not ours to
# explain. Found through typer, whichever click it runs on (its own copy in recent versions).
_CLICK_ERRORS = tuple(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
PASS_THROUGH: tuple[type[BaseException], ...] = (typer.Exit, typer.Abort, *_CLICK_ERRORS)


class Cli(TyperGroup):
    """The root command group: takes ``--debug`` anywhere, and turns exceptions into one line."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        head, sep, tail = _split_at_double_dash(args)
        if DEBUG_FLAG in head:
            _State.debug = True
            head = [a for a in head if a != DEBUG_FLAG]
        return super().parse_args(ctx, head + sep + tail)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except PASS_THROUGH:
            raise
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except Exception as exc:
            if debugging():
                raise
            line, code = explain(exc)
            typer.echo(f"error: {one_line(line)}", err=True)
            raise typer.Exit(code) from None


def _split_at_double_dash(args: list[str]) -> tuple[list[str], list[str], list[str]]:
    if "--" in args:
        i = args.index("--")
        return args[:i], ["--"], args[i + 1 :]
    return list(args), [], []
