"""Settings from environment variables (PERCORSO_*) with safe defaults for a laptop."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path


class ConfigError(ValueError):
    """A setting has a value percorso cannot use; the message names the variable."""


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw.replace("_", ""))
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None


@dataclass(frozen=True)
class Settings:
    """Every setting percorso reads; `Settings.from_env()` is the only place env vars are read.

    Example: ``Settings.from_env().database_url`` → ``"duckdb:///home/me/.percorso/percorso.duckdb"``.
    """

    data_dir: Path = field(default_factory=lambda: Path.home() / ".percorso")
    #: ``postgresql://…`` for production; empty means the embedded DuckDB file in ``data_dir``.
    database_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    #: Largest accepted request body for /v1/* calls (Segment's own limit is 500 KB per batch).
    max_body_bytes: int = 512 * 1024
    #: Largest accepted body for /v1/import (historical backfills send big batches).
    max_import_body_bytes: int = 16 * 1024 * 1024
    #: Largest single message (Segment: 32 KB).
    max_message_bytes: int = 32 * 1024
    #: Deepest nesting of objects/arrays inside properties, traits or context.
    max_json_depth: int = 16
    #: How far in the future a (skew-corrected) timestamp may be before it is refused.
    max_future_seconds: int = 24 * 3600
    #: Earliest year a timestamp may have; older ones are almost always unset clocks.
    min_year: int = 2000
    #: YAML file with channel rules replacing the built-in ones.
    channels_file: str = ""
    #: PostgreSQL pool size per process.
    pool_size: int = 8
    #: Most events one group commit writes.
    max_commit_events: int = 20_000
    stage_interval: int = 10  # seconds between stage-history updates in `serve`; 0 turns them off
    #: Run the automation worker inside `serve` (turn off with PERCORSO_AUTOMATION_WORKER=0 when
    #: separate `percorso worker` processes do the work on PostgreSQL).
    automation_worker: bool = True
    #: The address people reach this server at: unsubscribe and tracking links in emails use it.
    public_url: str = ""
    #: Seconds after which an outbox row claimed by a worker that stopped renewing its claim (it
    #: died) goes back to the queue. Longer than the slowest single send (SMTP/webhook timeouts).
    automation_claim_timeout: int = 300
    #: Sent messages marked sent in one commit (or every 20 ms): at most this many can reach
    #: their receiver twice when a worker dies; 1 marks every message alone (slower).
    automation_sent_group: int = 10
    #: Seconds the dashboard keeps an analytics result (a journey map, a funnel) before computing it
    #: again; pages show when their numbers were computed and offer a refresh. 0 turns caching off.
    dashboard_cache_seconds: int = 60
    #: Memory (MiB) the embedded DuckDB store may use for its buffers before larger sorts and joins
    #: spill to disk beside the database file; 0 leaves DuckDB's default (80% of the machine's).
    duckdb_memory_mb: int = 1536
    #: Comma-separated networks (CIDR or addresses) webhooks may reach although they are not
    #: public, e.g. ``10.20.0.0/16,127.0.0.1``; loopback, private and link-local are refused otherwise.
    webhook_allow_networks: str = ""
    #: Failed sign-ins an account may have before lockouts start.
    signin_free_failures: int = 5
    #: Seconds the first lockout lasts; each further failure doubles it. 0 turns lockouts off.
    signin_lockout_seconds: int = 30
    #: Longest lockout, in seconds.
    signin_lockout_max_seconds: int = 900
    #: Failed sign-ins one client address may make per minute (as a burst, then evenly); 0 is no limit.
    signin_address_per_minute: int = 30
    #: Requests per second one API key may send to the collector; 0 is no limit.
    collect_key_per_second: int = 5000
    #: Comma-separated addresses or networks of reverse proxies whose X-Forwarded-For is believed.
    trusted_proxies: str = ""

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def duckdb_path(self) -> Path:
        return self.data_dir / "percorso.duckdb"

    @property
    def engine(self) -> str:
        url = self.database_url
        if url.startswith(("postgresql://", "postgres://")):
            return "postgres"
        if url == "" or url.startswith("duckdb://"):
            return "duckdb"
        raise ConfigError(
            f"PERCORSO_DATABASE_URL={url!r} is not supported: use postgresql://user@host/db "
            "or leave it empty for the embedded DuckDB store"
        )

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        env = os.environ
        values: dict[str, object] = {}
        if env.get("PERCORSO_DATA_DIR"):
            values["data_dir"] = Path(env["PERCORSO_DATA_DIR"]).expanduser()
        for name in ("database_url", "host", "channels_file", "public_url", "webhook_allow_networks"):
            key = f"PERCORSO_{name.upper()}"
            if key in env:
                values[name] = env[key]
        if "PERCORSO_TRUSTED_PROXIES" in env:
            values["trusted_proxies"] = env["PERCORSO_TRUSTED_PROXIES"]
        defaults = cls()
        for f in fields(cls):
            if f.type in ("int", int):
                values[f.name] = _env_int(f"PERCORSO_{f.name.upper()}", getattr(defaults, f.name))
        raw = env.get("PERCORSO_AUTOMATION_WORKER", "").strip().lower()
        if raw:
            if raw not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
                raise ConfigError(f"PERCORSO_AUTOMATION_WORKER={raw!r} is not 1 or 0")
            values["automation_worker"] = raw in ("1", "true", "yes", "on")
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)  # type: ignore[arg-type]
        settings.engine  # validate early  # noqa: B018
        return settings


#: Documented in docs/configuration.md; a test checks every setting appears there.
SETTING_NAMES = tuple(f"PERCORSO_{f.name.upper()}" for f in fields(Settings))
