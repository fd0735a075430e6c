"""Settings for every headrace component: one object, read from the environment and flags, passed down."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path

from headrace.kafka_security import KafkaSecurity
from headrace.tape.config import TapeSettings
from headrace.tls_server import ServerTLS, server_tls


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, not {raw!r}") from exc


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def restrict_mode(path: Path, mode: int) -> None:
    """Take from `path` any permission bit beyond `mode` (0o700, 0o600): what a looser umask or an older
    version left readable to others is tightened at start; nothing is ever loosened. A path this process
    may not change (another user's mount point) is left as it is, with a warning."""
    with contextlib.suppress(FileNotFoundError):
        current = stat.S_IMODE(os.stat(path).st_mode)
        if current & ~mode:
            try:
                os.chmod(path, current & mode)
            except PermissionError as exc:
                logging.getLogger("headrace").warning("%s is mode %o, not %o: %s", path, current, mode, exc)


def private_dir(path: Path) -> None:
    """Make directory `path` (and its missing parents) with mode 0700, or tighten it to that."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    restrict_mode(path, 0o700)


@dataclass(frozen=True)
class Settings:
    """Everything a headrace process needs to know; `Settings.from_env()` is the usual way to make one."""

    data_dir: Path = field(default_factory=lambda: Path("headrace-data"))
    host: str = "127.0.0.1"
    door_port: int = 2880
    api_port: int = 3880
    #: SQLAlchemy URL; empty means SQLite in the data directory.
    db_url: str = ""
    #: Fixed admin API key; empty means generate one on first start.
    admin_key: str = ""
    #: Pool directories; empty means one pool under the data directory.
    pools: tuple[Path, ...] = ()
    #: Refuse uploads that would take a pool past this many bytes (0 = only the disk's own limit).
    pool_max_bytes: int = 0
    #: fsync file data before an upload commits, so a power cut cannot leave a committed empty file.
    fsync: bool = True
    #: Emit IN_OPEN/IN_ACCESS/IN_CLOSE_NOWRITE for reads and listings, as dCache does.
    read_events: bool = True
    #: Allow unauthenticated requests (as user "anonymous", with "other" permissions only).
    anonymous: bool = False
    #: Abandon an upload (nothing visible) when no data arrives for this many seconds.
    upload_idle_timeout: float = 60.0
    #: Largest total request header size the door and frontend accept.
    max_header_bytes: int = 16 * 1024
    #: Close a connection whose request line and headers have not all arrived this many seconds after it
    #: started waiting for them (door, frontend, pool processes).
    header_timeout: float = 30.0
    #: Answer 408 when a request body other than an upload's (JSON, WebDAV XML) stalls this many seconds.
    body_timeout: float = 30.0
    #: Where the CLI keeps its URLs and credentials.
    cli_config: Path = field(
        default_factory=lambda: Path(
            os.environ.get("HEADRACE_CONFIG")
            or Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "headrace" / "config.json"
        )
    )
    log_level: str = "info"
    #: Failed logins (wrong Basic keys) from one client address, or at one user with a chosen key, within
    #: `auth_failure_window` seconds, before further attempts are answered 429 (0: no limit).
    auth_failures: int = 20
    auth_failure_window: float = 60.0
    #: Event channels (SSE) one user may hold at once (dCache: 128).
    channels_per_user: int = 128
    #: Subscriptions one event channel may hold at once.
    subscriptions_per_channel: int = 64
    #: Recursive watches one user may hold at once (each is matched against every event).
    recursive_watches_per_user: int = 16
    #: Metronome subscriptions: ticks per second each (dCache: up to 1 MHz), and a user's together.
    metronome_max_hz: float = 100.0
    metronome_user_hz: float = 1000.0
    #: Metronome messages: at most this many bytes (UTF-8).
    metronome_max_message: int = 1024
    #: An event caused by an activation chain longer than this fires no trigger.
    fn_max_chain: int = 8
    #: Worker processes running at once, for all actions (0: four per CPU, within memory).
    fn_max_workers: int = 0
    #: OpenWhisk's per-namespace API limits (0: none): invocations and fires per minute, invocations in flight.
    fn_invokes_per_minute: int = 120
    fn_fires_per_minute: int = 120
    fn_concurrent_invocations: int = 100
    #: The event log keeps events this many seconds (0 = whatever their age) ...
    event_retention_seconds: float = 7 * 86400.0
    #: ... and at most this many events (0 = any number); durable consumers hold back both.
    event_retention_events: int = 10_000_000
    #: HTTP server under the door: "granian" (fast data path) or "uvicorn".
    door_server: str = "granian"
    #: Kafka bootstrap "HOST:PORT[,HOST:PORT...]" for the event relay; empty = no Kafka at all.
    kafka: str = ""
    #: The topic the relay publishes every event to (CloudEvents); billing records go to "billing".
    kafka_topic: str = "headrace-events"
    #: Redirect GETs (and PUTs with `Expect: 100-continue` or `X-Headrace-Redirect: yes`) of files on pool
    #: processes to the pool, with a signed token, instead of proxying the data through the door.
    door_redirect: bool = False
    #: How long a redirect's pool token is good for, in seconds.
    pool_token_seconds: float = 60.0
    #: The secret doors and pools sign pool tokens with; empty: one kept in the shared database.
    pool_secret: str = field(default="", repr=False)
    #: Where activations run: "local" (this process's warm workers) or "kafka" (published to
    #: `activation_topic` for `headrace invoker` processes; needs `kafka`).
    activations: str = "local"
    activation_topic: str = "headrace-activations"
    #: Invokers publish a notice of every finished activation here (blocking invokes wait for it).
    activation_results_topic: str = "headrace-activation-results"
    #: Partitions of the activation topic when headrace creates it.
    activation_partitions: int = 8
    #: Partitions one action's unordered activations spread over (0: all of them); fewer keep its warm
    #: workers on fewer invokers.
    activation_lanes: int = 0
    #: The invokers' consumer group.
    invoker_group: str = "headrace-invokers"
    #: Seconds an invoker waits for its running activations when partitions are taken from it (rebalance,
    #: stop) before it hands them back to be run again elsewhere.
    invoker_revoke_grace: float = 5.0
    #: With the Kafka transport, the controller looks this often (s) for activations queued a minute ago or
    #: more whose message Kafka never acknowledged (their publisher died), and publishes them again.
    fn_sweep_seconds: float = 30.0
    #: Seconds between looks for events that other processes committed (0: the component's default, 1 s
    #: in `headrace up`, 0.05 s in the separate roles).
    log_poll: float = 0.0
    #: The door's and the frontend's URLs as functions and clients reach them (a load balancer, in a
    #: cluster); empty: http://host:port of this process.
    public_door_url: str = ""
    public_api_url: str = ""
    #: The trusted JWT issuers file (YAML, auth/issuers.py); empty: bearer JWTs are refused.
    token_issuers: str = ""
    #: TLS on the door, the frontend (and `headrace pool`): the server certificate (PEM, chain after it) and
    #: its key; with `tls_client_ca`, clients must show a certificate that CA signed.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    #: Kafka client security (every Kafka client: relay, activation transport, kafka sources).
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    #: Tape: the HSM and when pools flush, evict and stage (headrace.tape.config).
    tape: TapeSettings = field(default_factory=TapeSettings)

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Read HEADRACE_* variables, then apply explicit overrides (flags win over the environment)."""
        base = cls(
            data_dir=Path(os.environ.get("HEADRACE_DATA") or "headrace-data"),
            host=os.environ.get("HEADRACE_HOST") or "127.0.0.1",
            door_port=_env_int("HEADRACE_DOOR_PORT", 2880),
            api_port=_env_int("HEADRACE_API_PORT", 3880),
            db_url=os.environ.get("HEADRACE_DB") or "",
            admin_key=os.environ.get("HEADRACE_ADMIN_KEY") or "",
            pool_max_bytes=_env_int("HEADRACE_POOL_MAX_BYTES", 0),
            fsync=_env_bool("HEADRACE_FSYNC", True),
            read_events=_env_bool("HEADRACE_READ_EVENTS", True),
            anonymous=_env_bool("HEADRACE_ANONYMOUS", False),
            log_level=os.environ.get("HEADRACE_LOG_LEVEL") or "info",
            auth_failures=_env_int("HEADRACE_AUTH_FAILURES", 20),
            auth_failure_window=float(os.environ.get("HEADRACE_AUTH_FAILURE_WINDOW") or 60),
            channels_per_user=_env_int("HEADRACE_CHANNELS_PER_USER", 128),
            subscriptions_per_channel=_env_int("HEADRACE_SUBSCRIPTIONS_PER_CHANNEL", 64),
            recursive_watches_per_user=_env_int("HEADRACE_RECURSIVE_WATCHES_PER_USER", 16),
            metronome_max_hz=float(os.environ.get("HEADRACE_METRONOME_MAX_HZ") or 100.0),
            metronome_user_hz=float(os.environ.get("HEADRACE_METRONOME_USER_HZ") or 1000.0),
            metronome_max_message=_env_int("HEADRACE_METRONOME_MAX_MESSAGE", 1024),
            event_retention_seconds=float(os.environ.get("HEADRACE_EVENT_RETENTION_SECONDS") or 7 * 86400),
            event_retention_events=_env_int("HEADRACE_EVENT_RETENTION_EVENTS", 10_000_000),
            fn_max_chain=_env_int("HEADRACE_FN_MAX_CHAIN", 8),
            fn_max_workers=_env_int("HEADRACE_FN_MAX_WORKERS", 0),
            fn_invokes_per_minute=_env_int("HEADRACE_FN_INVOKES_PER_MINUTE", 120),
            fn_fires_per_minute=_env_int("HEADRACE_FN_FIRES_PER_MINUTE", 120),
            fn_concurrent_invocations=_env_int("HEADRACE_FN_CONCURRENT_INVOCATIONS", 100),
            door_server=os.environ.get("HEADRACE_DOOR_SERVER") or "granian",
            upload_idle_timeout=float(os.environ.get("HEADRACE_UPLOAD_IDLE_TIMEOUT") or 60),
            header_timeout=float(os.environ.get("HEADRACE_HEADER_TIMEOUT") or 30),
            body_timeout=float(os.environ.get("HEADRACE_BODY_TIMEOUT") or 30),
            kafka=os.environ.get("HEADRACE_KAFKA") or "",
            kafka_topic=os.environ.get("HEADRACE_KAFKA_TOPIC") or "headrace-events",
            door_redirect=_env_bool("HEADRACE_DOOR_REDIRECT", False),
            pool_token_seconds=float(os.environ.get("HEADRACE_POOL_TOKEN_SECONDS") or 60),
            pool_secret=os.environ.get("HEADRACE_POOL_SECRET") or "",
            activations=os.environ.get("HEADRACE_ACTIVATIONS") or "local",
            activation_topic=os.environ.get("HEADRACE_ACTIVATION_TOPIC") or "headrace-activations",
            activation_results_topic=os.environ.get("HEADRACE_ACTIVATION_RESULTS_TOPIC")
            or "headrace-activation-results",
            activation_partitions=_env_int("HEADRACE_ACTIVATION_PARTITIONS", 8),
            activation_lanes=_env_int("HEADRACE_ACTIVATION_LANES", 0),
            invoker_group=os.environ.get("HEADRACE_INVOKER_GROUP") or "headrace-invokers",
            invoker_revoke_grace=float(os.environ.get("HEADRACE_INVOKER_REVOKE_GRACE") or 5.0),
            fn_sweep_seconds=float(os.environ.get("HEADRACE_FN_SWEEP_SECONDS") or 30.0),
            log_poll=float(os.environ.get("HEADRACE_LOG_POLL") or 0.0),
            public_door_url=os.environ.get("HEADRACE_PUBLIC_DOOR_URL") or "",
            public_api_url=os.environ.get("HEADRACE_PUBLIC_API_URL") or "",
            token_issuers=os.environ.get("HEADRACE_TOKEN_ISSUERS") or "",
            tls_cert=os.environ.get("HEADRACE_TLS_CERT") or "",
            tls_key=os.environ.get("HEADRACE_TLS_KEY") or "",
            tls_client_ca=os.environ.get("HEADRACE_TLS_CLIENT_CA") or "",
            kafka_security=KafkaSecurity.from_env(),
            tape=TapeSettings.from_env(),
        )
        clean = {k: v for k, v in overrides.items() if v is not None}
        return replace(base, **clean)  # type: ignore[arg-type]

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{(self.data_dir / 'headrace.db').resolve()}"

    @property
    def pool_dirs(self) -> tuple[Path, ...]:
        return self.pools or (self.data_dir / "pools" / "pool0",)

    @property
    def scheme(self) -> str:
        """ "https" when this process's servers speak TLS, else "http"."""
        return "https" if self.tls_cert else "http"

    @property
    def door_url(self) -> str:
        return self.public_door_url.rstrip("/") or f"{self.scheme}://{self.host}:{self.door_port}"

    @property
    def api_url(self) -> str:
        return self.public_api_url.rstrip("/") or f"{self.scheme}://{self.host}:{self.api_port}"

    def server_tls(self) -> ServerTLS | None:
        """The servers' TLS (None: plain HTTP); TLSConfigError (a ValueError) for options that cannot work."""
        return server_tls(self.tls_cert, self.tls_key, self.tls_client_ca)

    def check_activations(self) -> None:
        """Refuse a transport that cannot work (ValueError with the reason)."""
        if self.activations not in ("local", "kafka"):
            raise ValueError(f"activations are 'local' or 'kafka', not {self.activations!r}")
        if self.activations == "kafka" and not self.kafka:
            raise ValueError("activations through Kafka need --kafka HOST:PORT")
        if self.activation_partitions < 1:
            raise ValueError("HEADRACE_ACTIVATION_PARTITIONS must be at least 1")
