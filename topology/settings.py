"""Process settings: one frozen object built from ``MARKETSWARM_*`` environment variables in ``main()``."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CsvList = Annotated[list[str], NoDecode]


class ModelSettings(BaseModel):
    """The settings a published model depends on: part of the model, not of the deployment.

    The system in force records them (streams.model_settings_key, written by the source or `marketswarm
    run`), every agent adopts the recorded ones at start, `record` writes them into a capture and
    `replay` adopts a capture's, so a replay reproduces the live run whatever its own environment says.
    A step that depends on them is given this object, not the process's settings. Each is also a
    ``MARKETSWARM_*`` variable (``Settings`` inherits them).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # hydrate
    fill_window_s: float = Field(
        default=900.0, gt=0, description="Event-time window of the fill ledger that counts each fill once."
    )

    # calc
    calc_bucket_ms: int = Field(
        default=50,
        ge=1,
        description="Calc agents coalesce changes per bucket of this much event time (live: a change "
        "waits at most this long, wall time, to be emitted).",
    )
    heatmap_expiries: int = Field(default=5, ge=1, description="Nearest expiries in the heatmaps.")
    heatmap_range_pct: float = Field(
        default=4.0, gt=0, description="Heatmap strikes within this % of the epoch's spot."
    )
    max_width_steps: int = Field(
        default=20, ge=1, description="Vertical/butterfly widths: 1..N times the expiry's strike step."
    )
    theo_spot_step_bp: float = Field(
        default=2.0,
        gt=0,
        description="Heatmap theo is re-priced when spot has moved this many basis points since it was last priced.",
    )
    theo_refresh_s: float = Field(
        default=30.0, gt=0, description="... or when this much event time has passed since it was last priced."
    )
    gex_stale_s: float = Field(
        default=300.0, gt=0, description="GEX is flagged stale when its chain data is this much older than spot."
    )

    # publish
    publish_min_tiles: int = Field(default=5000, ge=1, description="Publish when this many tiles changed.")
    publish_min_changed_pct: float = Field(
        default=30.0, gt=0, description="... or when this % of the model's tiles changed."
    )
    publish_interval_ms: int = Field(
        default=40,
        ge=1,
        description="... or when this much event time passed since the last version (live: a change "
        "waits at most this long, wall time, to be published).",
    )


class Settings(BaseSettings, ModelSettings):
    """Deployment settings, and the model settings (``ModelSettings``) as this environment has them.
    Stream keys and group names are code (topology/streams.py), never settings.

    Every field is read from ``MARKETSWARM_<FIELD>`` (upper case); lists are comma-separated.
    """

    model_config = SettingsConfigDict(env_prefix="MARKETSWARM_", frozen=True, extra="forbid")

    redis_url: str | None = Field(
        default=None,
        description="Redis/Valkey DSN, e.g. redis://host:6379/0. Unset: `marketswarm run` starts an "
        "embedded Valkey under data_dir and other commands use the one it recorded there.",
    )
    data_dir: Path = Field(default=Path(".data"), description="Embedded server data (AOF) and run files.")
    consumer: str = Field(
        default_factory=socket.gethostname,
        description="Consumer name in every group; the pod name under Kubernetes. Default: host name.",
    )
    underlyings: CsvList = Field(default=["SPX", "NDX"], description="Underlyings to run, comma-separated.")
    batch_size: int = Field(default=500, ge=1, description="Entries per XREADGROUP (COUNT).")
    block_ms: int = Field(default=1000, ge=1, description="XREADGROUP BLOCK, milliseconds.")
    min_idle_ms: int = Field(
        default=30_000, ge=1, description="Pending entries idle this long are reclaimed (XAUTOCLAIM)."
    )
    claim_interval_ms: int = Field(default=5_000, ge=1, description="How often the reclaimer runs.")
    max_deliveries: int = Field(default=5, ge=1, description="Deliveries before an entry is moved to <stream>.dlq.")
    shutdown_grace_s: float = Field(
        default=10.0, gt=0, description="Time to drain the in-flight batch on SIGTERM/SIGINT."
    )
    heartbeat_ttl_s: int = Field(default=15, ge=2, description="TTL of an agent's liveness key.")
    lease_ttl_ms: int = Field(
        default=8_000,
        ge=100,
        description="Lease of stateful per-underlying work: a standby takes over within this long (a "
        "restarted agent, or one whose holder's heartbeat is gone, at once); an agent whose event loop is "
        "blocked for half of it stops renewing, so a wedged step hands over.",
    )
    min_replicas_ack: int = Field(
        default=0,
        ge=0,
        description="Replicas that must acknowledge every raw write and every commit (WAIT) before it "
        "counts as done, so a failover loses nothing acknowledged; 0: asynchronous replication.",
    )
    replica_ack_timeout_ms: int = Field(
        default=1000, ge=1, description="Longest wait for those replicas; a timeout is logged and counted."
    )
    metrics_port: int = Field(default=0, ge=0, description="Agent /metrics port; 0 disables it.")
    processes: int = Field(
        default=0,
        ge=0,
        description="Agent processes `marketswarm run` starts, agent kinds dealt among them: 0 = one per CPU "
        "core plus one (one per kind on a machine with as many cores as kinds).",
    )
    log_level: str = Field(default="INFO", description="Python logging level.")
    history: bool = Field(
        default=True,
        description="Keep the day's history (level points, minute keyframes, recent checkpoints) for `?at=`, "
        "the Day view and the scrubber; off: the publishers write none of it.",
    )
    rules: Path | None = Field(
        default=None,
        description="The alert rules and webhook receivers (TOML, schemas/alerts.toml shows every key); "
        "unset: that shipped file.",
    )

    max_backlog: int = Field(
        default=2000,
        ge=0,
        description="Sources shed market frames (counted) while the agents of an underlying have more "
        "entries than this not yet read or acknowledged; 0 = never shed.",
    )

    # normalize
    max_frame_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1024,
        description="Frames larger than this are rejected (oversized) where they arrive: the sources do not "
        "store them, normalize rejects any other raw entry that large.",
    )
    max_event_future_s: float = Field(
        default=2.0,
        gt=0,
        description="Events timed more than this after their receive time are rejected (a clock that runs "
        "ahead would otherwise hold back every later value until it is caught up).",
    )
    max_receive_skew_s: float = Field(
        default=2.0,
        gt=0,
        description="A raw frame whose receive time is more than this after the server's time of its "
        "entry is rejected (bad_receive_time): a writer's clock never outruns the server's.",
    )
    max_event_age_s: float = Field(
        default=18 * 3600.0, gt=0, description="Quotes/trades older than this at receipt are rejected (stale)."
    )

    # hydrate
    epoch_retire_ttl_s: int = Field(default=300, ge=1, description="A retired epoch's state lives this long.")

    idle_flush: bool = Field(
        default=True,
        description="Emit coalesced work when input goes quiet or it was held its bucket/interval of wall time "
        "(off in replays, which flush at the end).",
    )

    # the model settings (calc, publish, the fill window) are ModelSettings' fields, inherited

    # sources
    source: Literal["sim", "massive", "none"] = Field(
        default="sim", description="Market source that `marketswarm run` starts."
    )
    sim_rate: float = Field(default=2000.0, ge=0, description="Simulated option events per second, per underlying.")
    sim_seed: int = Field(default=7, description="Seed of the simulated market (deterministic).")
    massive_rest_base: str = Field(default="https://api.massive.com", description="Massive REST base URL.")
    massive_ws_feed: str = Field(
        default="socket.massive.com", description="Massive WebSocket host (delayed.massive.com for delayed data)."
    )
    massive_ws_secure: bool = Field(default=True, description="wss:// (false only for a loopback fake).")
    ws_mode: Literal["targeted", "firehose"] = Field(
        default="targeted", description="targeted: T+Q for the poller's contracts; firehose: T.* plus targeted Q."
    )
    ws_connections: int = Field(default=1, ge=1, description="Option WebSocket connections (1,000 quotes each).")
    ws_buffer_frames: int = Field(default=20_000, ge=100, description="Frames buffered between socket and Redis.")
    chain_poll_min_s: float = Field(default=2.0, gt=0, description="Fastest chain poll cadence, seconds.")
    chain_poll_max_s: float = Field(default=60.0, gt=0, description="Slowest chain poll cadence (and backoff cap).")
    chain_range_pct: float = Field(default=5.0, gt=0, description="Chain poll: strikes within this % of spot.")
    chain_expiry_days: int = Field(default=7, ge=0, description="Chain poll: expiries up to this many days ahead.")
    massive_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("MASSIVE_API_KEY", "MARKETSWARM_MASSIVE_API_KEY"),
        description="Massive API key (env MASSIVE_API_KEY).",
    )

    # gateway
    gateway_host: str = Field(default="127.0.0.1", description="Gateway bind address.")
    gateway_port: int = Field(default=8000, ge=0, description="Gateway port.")
    sse_max_resume_diffs: int = Field(
        default=2000,
        ge=0,
        description="An SSE client resuming further behind than this many diffs gets a fresh snapshot instead "
        "(what one reconnect may cost the gateway and Redis).",
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="Bearer token for the gateway (header, or the cookie /auth sets); required when "
        "MARKETSWARM_GATEWAY_HOST is not a loopback address, unless MARKETSWARM_GATEWAY_NO_AUTH.",
    )
    gateway_no_auth: bool = Field(
        default=False,
        description="Serve beyond loopback without a token (the gateway's --no-auth): say so only behind "
        "an authenticating proxy.",
    )
    sse_max_clients: int = Field(default=1000, ge=1, description="SSE connections per gateway process.")
    sse_max_per_address: int = Field(
        default=64, ge=1, description="SSE connections per client address (a dashboard tab holds one)."
    )
    cors_origins: CsvList = Field(
        default=[], description="Explicit CORS allowlist, comma-separated (no '*': credentials are allowed)."
    )

    @field_validator("underlyings", "cors_origins", mode="before")
    @classmethod
    def _split_csv(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [part.strip() for part in v.split(",") if part.strip()]
        return v

    @field_validator("cors_origins")
    @classmethod
    def _no_wildcard(cls, v: list[str]) -> list[str]:
        if "*" in v:
            raise ValueError("'*' cannot be allowed with credentials: list the dashboard's origins")
        return v

    @field_validator("api_token")
    @classmethod
    def _empty_is_none(cls, v: SecretStr | None) -> SecretStr | None:
        return v if v is not None and v.get_secret_value() else None  # an empty secret is no token

    @field_validator("underlyings")
    @classmethod
    def _upper(cls, v: list[str]) -> list[str]:
        return [u.upper() for u in v]

    def masked(self, changed_only: bool = True) -> dict[str, Any]:
        """The settings for the start-up log line, secrets masked; by default only those not at their
        default (plus the Redis URL and consumer, which every log reader needs)."""
        out: dict[str, Any] = {}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if changed_only and name not in ("redis_url", "consumer") and field.default_factory is None:
                if value == field.default:
                    continue
            out[name] = (
                "**********" if isinstance(value, SecretStr) else str(value) if isinstance(value, Path) else value
            )
        if out.get("redis_url"):
            out["redis_url"] = mask_url(out["redis_url"])
        return out

    @property
    def model_settings(self) -> ModelSettings:
        """The model settings: what the published numbers depend on."""
        return ModelSettings.model_validate({name: getattr(self, name) for name in ModelSettings.model_fields})

    def with_model_settings(self, recorded: Mapping[str, Any]) -> Settings:
        """These settings with recorded model settings in place of this environment's. Validated like
        the environment: a name that is not a model setting, or a value out of range, raises
        ModelSettingsError."""
        unknown = set(recorded) - set(ModelSettings.model_fields)
        if unknown:
            raise ModelSettingsError(f"not model settings: {', '.join(sorted(unknown))}")
        fields = ModelSettings.model_fields
        values: dict[str, Any] = {}
        for name, value in recorded.items():
            field = fields[name]
            try:
                adapter: TypeAdapter[Any] = TypeAdapter(Annotated[field.annotation, field])  # type: ignore[arg-type]
                values[name] = adapter.validate_python(value)
            except ValidationError as exc:
                raise ModelSettingsError(f"recorded model setting {name}={value!r} is invalid: {exc}") from exc
        return self.model_copy(update=values)


class ModelSettingsError(ValueError):
    """Raised when recorded model settings (in Redis or a capture) name an unknown setting or a bad value."""


def env_help() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting: README and ``--help`` list these."""
    rows = []
    for name, field in Settings.model_fields.items():
        if name == "massive_api_key":
            var = "MASSIVE_API_KEY"
        else:
            var = "MARKETSWARM_" + name.upper()
        if field.default_factory is not None:
            default = "(host name)" if name == "consumer" else "(computed)"
        elif isinstance(field.default, list):
            default = ",".join(field.default)
        else:
            default = "" if field.default is None else str(field.default)
        rows.append((var, default, field.description or ""))
    return rows


def mask_url(url: str) -> str:
    """``url`` with its credentials (user:password@) masked, for logs and the command line."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
