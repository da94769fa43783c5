"""Typed configuration: one defaults module with layered overrides.

Every default lives in the dataclasses below. Layers override them in this order, later wins:

1. the defaults here,
2. a YAML config file (``--config FILE`` or ``HOMEWARD_CONFIG``),
3. environment variables: ``HOMEWARD_<KEY>`` for top-level keys, ``HOMEWARD_<SECTION>__<KEY>`` for sections
   (``HOMEWARD_DATA_DIR=/srv/homeward``, ``HOMEWARD_MATCH__TOP_K=20``); every ``HOMEWARD_*`` variable is read as
   a key, except ``HOMEWARD_CONFIG`` (the file) and ``HOMEWARD_ONLINE`` (hub downloads). Switches that are not
   configuration keys use the ``HW_`` prefix (``HW_COMPILE``, ``HW_SHARED_DIR``, ``HW_DATASETS_DIR``), so the
   loader never mistakes them for a key,
4. command-line flags (``--data-dir``, ``--set match.top_k=20``).

Each component reads only its own section (``settings.crawl``, ``settings.match`` ...). An unknown key or a value of
the wrong type raises :class:`ConfigError` naming the key and the layer it came from, so a typo never silently
falls back to a default.

Secrets (fields with :data:`SECRET` metadata: ``salt``, ``storage_options``, ``crawl.petfinder_key``,
``crawl.petfinder_secret``, ``report.smtp_password``) are never typed: from any layer they are the exact string given
(``salt: 0777`` is ``"0777"``, not 511; ``yes`` stays ``"yes"``, ``null`` stays ``"null"``: leave a key out to leave
it unset), a list or mapping is refused, and no error message, ``repr`` or log line shows their value.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.errors import HomewardError


class ConfigError(HomewardError, ValueError):
    """Bad configuration: the message names the key, the value (never a secret's) and where it came from."""


#: ``metadata`` of a credential field: kept as the exact string given (never YAML-typed), shown in no error message
#: (declare it with ``repr=False`` too). On a mapping field (``storage_options``) it applies to every value.
SECRET = types.MappingProxyType({"secret": True})


@dataclass(frozen=True)
class RaySettings:
    address: str | None = None
    """``None`` starts a local Ray; ``auto`` or ``ray://host:10001`` joins a running cluster."""
    num_cpus: int | None = None
    """CPUs for a local Ray; ``None`` takes every core of this machine."""
    num_gpus: int | None = None
    object_store_mb: int = 2048
    """Local object store cap. Ray's default (30% of RAM) starves small machines."""
    init_timeout_s: float = 60.0


@dataclass(frozen=True)
class CrawlSettings:
    sources_file: str | None = None
    """YAML file of extra or overriding sources; the built-in list is ``crawlers/sources.yaml``."""
    user_agent: str = "HomewardBot/0.1 (+{contact_url})"
    contact_url: str = "https://github.com/homeward-pets/homeward"
    concurrency_per_domain: int = 2
    download_delay_s: float = 0.5
    autothrottle: bool = True
    obey_robots: bool = True
    timeout_s: float = 30.0
    retry_times: int = 2
    max_page_mb: float = 8.0
    max_image_mb: float = 15.0
    max_image_pixels: int = 80_000_000
    max_pages: int = 0
    """Stop a crawl after this many responses (0: no limit)."""
    allow_hosts: list[str] = field(default_factory=list)
    """``host`` or ``host:port`` entries a crawl may fetch even though they resolve to a loopback, private or other
    non-public address (an intranet mirror, a photo CDN on the LAN). Every other such address is refused with
    reason ``blocked_address``; a source's own ``base_url`` host:port and operator start URLs need no entry."""
    petfinder_key: str | None = field(default=None, repr=False, metadata=SECRET)
    petfinder_secret: str | None = field(default=None, repr=False, metadata=SECRET)


@dataclass(frozen=True)
class EnrichSettings:
    profile: str = "cpu"
    """Named model profile (``engine/models/profiles.yaml``): which detector, embedder and captioners to run."""
    batch_size: int = 16
    actor_cpus: float = 0.5
    """CPUs per model actor. Fractional on purpose: actors that hold every core starve Ray Data's read tasks."""
    actor_gpus: float = 0.0
    """GPUs per model actor when the cluster has GPUs (fractions share one card)."""
    actors: int = 1
    detect_confidence: float = 0.25
    max_side: int = 1280
    """Photos are downscaled to this longest side before detection."""
    retry_failed: bool = True
    inline_max_photos: int = 64
    """Runs with at most this many distinct images skip Ray: the same stages run in the calling process, on models
    that stay loaded there between runs (a scheduler's small rounds pay no actor-pool start-up). 0: always Ray."""


DEFAULT_CALIBRATION = {"slope": 8.0, "offset": -4.0}
"""Set by hand from the fused-score scale rather than fitted: a pair whose image is ~4 background spreads above a
random pair, with agreeing attributes and nearby in place and time, fuses to ≈ 0.75 → score ≈ 0.88; a random pair
fuses to ≈ 0 → score ≈ 0.02; fused = 0.5 (e.g. a strong image match alone) → 0.5."""


@dataclass(frozen=True)
class MatchSettings:
    top_k: int = 10
    tile_size: int | None = None
    """Rows per side of one scoring tile: peak memory grows with tile_size², never with N×M. None: 4096 on a CPU
    (64 MB of scores, stays in cache-friendly sizes), 16384 on a GPU (1 GB of scores; smaller tiles leave the GPU
    waiting on per-tile top-k merges: 0.55 of the plain-matmul rate at 4096 vs 0.71 at 16384 on an H100)."""
    device: str = "auto"
    max_speed_km_per_day: float = 1.0
    base_radius_km: float = 8.0
    max_radius_km: float = 9.0
    """Cap on the plausible radius ``base_radius_km + max_speed_km_per_day · days`` (8 km on the day, 9 km from
    the next day on): pairs farther apart are ruled out and never scored, and blocking cuts the map by this radius,
    so a wider cap scores quadratically more pairs. Most lost pets are found within a few kilometres; an animal a
    shelter moved farther (a transfer across a county or to a rescue elsewhere) needs a wider setting."""
    place_slack_km: dict[str, float] = field(default_factory=lambda: {"city": 10.0, "shelter": 15.0})
    """How far a listing's point may be from the animal's spot, by where the point came from (``geo_source``): a
    town's centroid (10 km: most towns' centre-to-edge distance; the largest cities reach farther) or the shelter a
    found animal sits in (15 km: an intake area). A pair's distance counts minus both slacks, in the hard radius and
    the distance prior alike, so a lost dog named by its town still pairs with a shelter's found dog 25 km from the
    town's centre; the price is more pairs scored for such listings (their reach grows with the slack). Sources not
    named (a page's own coordinates, an address or postcode) count as exact; ``region`` (a state's centroid) is left
    at 0 — any slack that covered a state would pair it with the whole state."""
    geo_scale_km: float = 15.0
    geo_scale_km_per_day: float = 25.0
    """The distance prior's softness, apart from the hard radius: ``geo = exp(-d / (geo_scale_km +
    geo_scale_km_per_day · days))``. Within the 9 km cap distance only nudges a score; scaling it by the capped
    radius instead (8-9 km) let near strangers outrank the animal itself (planted-reunion recall@1 0.911 against
    0.915 at 200k listings)."""
    max_days: int = 365
    found_before_lost_grace_days: int = 3
    weights: dict[str, float] = field(
        default_factory=lambda: {"image": 0.55, "text": 0.15, "attributes": 0.15, "geo": 0.1, "time": 0.05}
    )
    calibration: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_CALIBRATION))
    """``score = sigmoid(slope·fused + offset)``: keys ``slope`` and ``offset`` (one given alone keeps the other's
    default). Refit with :func:`engine.scoring.fuse.fit_calibration` once confirmed/rejected feedback exists."""
    publish_chunk_rows: int = 100_000
    """Matches whose terms and explanations are computed and inserted at a time while a run publishes (each chunk
    in its own short transaction, before the one that publishes the run): publication memory stays one chunk
    whatever the number of matches, and the DuckDB file is never locked while terms are computed."""
    vector_cache: bool = True
    """Keep the vectors a run placed under ``<data_dir>/cache/match-vectors`` (a copy of the sides: ≈ 0.3 GB at 50k
    listings / 125k photos of 512 + 384 dimensions), so an incremental run copies the unchanged listings' vectors
    instead of reading them from LanceDB again (:mod:`ray_jobs.match_cache`). Full runs always read LanceDB."""
    keep_runs: int = 10
    """Published match runs whose pairs stay in ``matches`` (at least 2: an incremental run merges with the latest).
    Older runs keep their ``match_runs`` row (figures, parameters, lineage); their pairs are deleted when a run
    publishes, so a scheduler matching every round does not grow the file (and the analysts' copy) without end."""
    background_drift: float = 0.1
    """The image/text background (median and spread of random pairs) is estimated when a match lineage starts and
    frozen after, so a new listing does not move every score; it is re-estimated (a full run) once either side's
    detection or text-vector count differs from the counts it was estimated on by more than this fraction."""


@dataclass(frozen=True)
class SearchSettings:
    """Search by photo (``homeward search``, the dashboard) and the vector index enrichment keeps for it
    (:mod:`engine.vector_index`; figures in README "Search by photo")."""

    index_min_rows: int = 50_000
    """Detection rows from which enrichment keeps a vector index; below it brute force is exact and fast."""
    index_type: str = "IVF_HNSW_SQ"
    """``IVF_HNSW_SQ`` (chosen: 8-bit vectors in a graph per partition, built ~7x faster than ``IVF_PQ`` at 2,752-d
    and 30k rows) or ``IVF_PQ``."""
    index_partition_rows: int = 100_000
    """Rows per IVF partition: partitions = rows / this (at least 1). Few large partitions, each its own HNSW graph:
    k-means on clustered 2,752-d vectors splits groups of look-alikes across partitions, so probing a few of many lost
    recall (at 300k rows, 12 partitions: recall@10 0.83 probing 4, 0.89 probing 6)."""
    index_m: int = 16
    """HNSW links per node."""
    index_ef_construction: int = 100
    """HNSW candidate list while building."""
    index_sub_vectors: int = 172
    """IVF_PQ only: sub-vectors per vector (dim / 16 at 2,752-d)."""
    index_rebuild_share: float = 0.5
    """Retrain the index from scratch once the rows added since it was trained exceed this share of it; below,
    enrichment folds new rows into it (``optimize``)."""
    nprobes: int = 3
    """IVF partitions searched per query vector (3: every partition up to 300k rows)."""
    ef: int = 1000
    """HNSW candidate list while searching (at 300k rows, refine 20: ef 300 gave recall@10 0.976–0.987 over two index
    builds, 1000 gave 0.993 at p95 73 ms; README, bench search)."""
    refine_factor: int = 20
    """Candidates re-scored on the full float32 vectors: ``limit × refine_factor``."""
    oversample: int = 8
    """Detections fetched per query vector = ``k × oversample`` before listing filters and the exact re-rank."""


@dataclass(frozen=True)
class ReportSettings:
    out_dir: str | None = None
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_user: str | None = None
    smtp_password: str | None = field(default=None, repr=False, metadata=SECRET)
    smtp_sender: str = "homeward@localhost"
    smtp_tls: str | None = None
    """``implicit`` (TLS from the first byte, ``smtplib.SMTP_SSL``), ``starttls`` (plain connect, then upgrade) or
    ``none``; unset: ``implicit`` on port 465, ``starttls`` on 587, ``none`` otherwise."""
    smtp_timeout_s: float = 30.0
    dashboard_url: str | None = None
    """Public base URL of the dashboard (``https://dash.example.org``): report e-mails link each candidate to its
    shelter page with the shelter's token, owner alerts carry ``<dashboard_url>/unsubscribe?token=…``. Unset: no
    dashboard links (alerts then say to reply to unsubscribe)."""
    alert_threshold: float = 0.6
    """Default score a listing must reach to be e-mailed to the owner of a watch (``homeward watch add``)."""
    alert_max_per_email: int = 10
    """At most this many listings in one owner alert; the rest follow after the next match run."""
    recipients: dict[str, str] = field(default_factory=dict)
    """Shelter key (``source:shelter_id`` such as ``petango:SEAS``, or the ``source`` alone for found posts) →
    e-mail address(es, comma-separated) that ``homeward report --email`` sends that shelter's report to; shelters not
    listed get files only."""


@dataclass(frozen=True)
class ScheduleSettings:
    backoff_base_s: float = 60.0
    """A failed step (a source's crawl, enrich, match, deliver) is retried this long after its first failure, then
    twice as long after each further one in a row."""
    backoff_max_s: float = 3600.0
    """Longest wait between retries (a failing source's crawl also never waits longer than its cadence)."""


@dataclass(frozen=True)
class AlertSettings:
    operator_email: str | None = None
    """Address(es, comma-separated) that get an e-mail (over ``report.smtp_*``) when a source or a loop step fails
    ``failures`` times in a row, or a source is overdue; once per incident. Unset: alerts are only logged."""
    failures: int = 3
    overdue_factor: float = 3.0
    """A source is overdue when its last successful crawl is older than this many cadences."""


@dataclass(frozen=True)
class DashboardSettings:
    host: str = "127.0.0.1"
    port: int = 8501
    allowed_hosts: list[str] = field(default_factory=list)
    """Host names (``Host`` header, port ignored) the dashboard answers besides the address it binds (and, bound to
    loopback, ``localhost``/``127.0.0.1``/``[::1]``): the public name(s) of a deployment behind a reverse proxy, e.g.
    ``[dash.example.org]``. Any other name is refused (400), which stops DNS-rebinding pages."""
    forwarded_allow_ips: list[str] = field(default_factory=list)
    """Addresses of reverse proxies whose ``X-Forwarded-For``/``X-Forwarded-Proto`` the dashboard believes (uvicorn's
    ``--forwarded-allow-ips``), e.g. ``[127.0.0.1]`` for nginx or Caddy on the same machine. Empty: nobody's, so a
    client cannot claim another address or ``https``; behind a TLS proxy set it, or cookies lose ``Secure``."""
    tile_url: str = ""
    """Map tiles for the candidate map, a Leaflet URL template such as
    ``https://tile.openstreetmap.org/{z}/{x}/{y}.png`` (its host is added to the pages' CSP). Empty: no tiles, no
    third-party request; the lost and found points and the line between them still render."""
    tile_attribution: str = ""
    """Attribution text shown on the map for ``tile_url`` (tile providers require one, e.g. ``© OpenStreetMap``)."""


@dataclass(frozen=True)
class Settings:
    data_dir: str = "homeward-data"
    """Root of everything a run writes, unless a location below is set explicitly."""
    lance_uri: str | None = None
    """LanceDB location (local path or ``s3://``); default ``<data_dir>/lance``."""
    duckdb_path: str | None = None
    """DuckDB file; default ``<data_dir>/homeward.duckdb``."""
    photo_store: str | None = None
    """Content-addressed photo store (path or fsspec URI); default ``<data_dir>/photos``."""
    storage_options: dict[str, str] = field(default_factory=dict, repr=False, metadata=SECRET)
    """Object-store options for ``lance_uri`` and ``photo_store`` when they are ``s3://`` (or ``gs://``, ``az://``)
    URIs, in LanceDB's spelling: ``aws_access_key_id``, ``aws_secret_access_key``, ``aws_session_token``,
    ``aws_region``, ``aws_endpoint`` (an S3-compatible server such as MinIO), ``allow_http`` (``"true"`` for a
    plain-http endpoint). LanceDB gets them as they are; the photo store (s3fs) gets the same credentials, region and
    endpoint. Values are secrets: kept as the exact text written (``allow_http: true`` is ``"true"``). Empty: each
    library's own environment/instance-profile lookup (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL`` ...)."""
    models_dir: str | None = None
    """Local weights folder searched before any model hub (``HOMEWARD_MODELS_DIR``)."""
    salt: str = field(default="homeward-default-salt-change-me", repr=False, metadata=SECRET)
    """Salt for contact and chip hashes. Set your own in production."""
    ray: RaySettings = field(default_factory=RaySettings)
    crawl: CrawlSettings = field(default_factory=CrawlSettings)
    enrich: EnrichSettings = field(default_factory=EnrichSettings)
    match: MatchSettings = field(default_factory=MatchSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    report: ReportSettings = field(default_factory=ReportSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    dashboard: DashboardSettings = field(default_factory=DashboardSettings)

    @property
    def lance(self) -> str:
        return self.lance_uri or str(Path(self.data_dir) / "lance")

    @property
    def duckdb(self) -> str:
        return self.duckdb_path or str(Path(self.data_dir) / "homeward.duckdb")

    @property
    def photos(self) -> str:
        return self.photo_store or str(Path(self.data_dir) / "photos")

    @property
    def reports(self) -> str:
        return self.report.out_dir or str(Path(self.data_dir) / "reports")

    def ensure_writable(self) -> None:
        """Fail early, before any job starts, when the data dir cannot be written."""
        path = Path(self.data_dir)
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".write-probe"
            probe.write_bytes(b"")
            probe.unlink()
        except (FileExistsError, NotADirectoryError) as exc:
            raise ConfigError(f"data_dir {str(path)!r} is not writable: it or a folder above it is a file") from exc
        except OSError as exc:
            raise ConfigError(f"data_dir {str(path)!r} is not writable: {exc.strerror or exc}") from exc

    def with_overrides(self, overrides: dict[str, Any], origin: str = "override") -> Settings:
        return _apply(self, overrides, origin)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str, origin: str) -> Any:
    """Check ``value`` against the annotation ``tp``; strings (env, ``--set``) are parsed as YAML scalars."""
    if isinstance(value, str) and tp is not str:
        with contextlib.suppress(yaml.YAMLError):
            value = yaml.safe_load(value) if value.strip() else None
    origin_tp = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin_tp in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, origin)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r} ({origin})")
    if origin_tp is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r} expects a list, got {value!r} (from {origin})")
        return [_coerce(v, args[0], f"{key}[]", origin) for v in value]
    if origin_tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} expects a mapping, got {value!r} (from {origin})")
        return {str(k): _coerce(v, args[1], f"{key}.{k}", origin) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"config key {key!r} expects {getattr(tp, '__name__', tp)}, got {value!r} (from {origin})")


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", type(None): "null"}.get(type(value), type(value).__name__)


def _secret_value(value: Any, tp: Any, key: str, origin: str) -> Any:
    """A secret as given: a string stays that exact string, ``None`` unsets an optional one; the value itself never
    appears in the error."""
    if typing.get_origin(tp) is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} expects a mapping of strings, got {_kind(value)} (from {origin})")
        return {str(k): _secret_value(v, str, f"{key}.{k}", origin) for k, v in value.items()}
    if value is None and type(None) in typing.get_args(tp):
        return None
    if isinstance(value, str):
        return value
    raise ConfigError(
        f"config key {key!r} is a secret and expects a string, got {_kind(value)} (from {origin}; value not shown)"
    )


def _apply(obj: Any, overrides: dict[str, Any], origin: str, prefix: str = "") -> Any:
    hints = typing.get_type_hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    changes: dict[str, Any] = {}
    for raw_key, value in overrides.items():
        key = str(raw_key).replace("-", "_")
        dotted = f"{prefix}{key}"
        if key not in hints:
            known = ", ".join(sorted(hints))
            raise ConfigError(f"unknown config key {dotted!r} (from {origin}); known keys here: {known}")
        tp = hints[key]
        if _is_section(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {dotted!r} is a section and needs a mapping (from {origin})")
            changes[key] = _apply(getattr(obj, key), value, origin, f"{dotted}.")
        elif fields[key].metadata.get("secret"):
            changes[key] = _secret_value(value, tp, dotted, origin)
        else:
            changes[key] = _coerce(value, tp, dotted, origin)
    return dataclasses.replace(obj, **changes)


def _untype_secrets(node: yaml.Node, data: Any, section: type) -> None:
    """Put back the source text of every secret scalar in ``data`` (the YAML document built from ``node``), so
    ``salt: 0777`` is ``"0777"`` and not 511, and ``null`` is ``"null"`` (leave a key out to leave it unset). Other
    keys keep their YAML types, and non-scalars are left for :func:`_secret_value` to refuse."""
    if not isinstance(node, yaml.MappingNode) or not isinstance(data, dict):
        return
    fields = {f.name: f for f in dataclasses.fields(section)}
    hints = typing.get_type_hints(section)
    for key_node, value_node in node.value:
        raw_key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        name = str(raw_key).replace("-", "_")
        if raw_key not in data or name not in fields:
            continue
        if _is_section(hints[name]):
            _untype_secrets(value_node, data[raw_key], hints[name])
        elif fields[name].metadata.get("secret"):
            data[raw_key] = _scalar_text(value_node, data[raw_key])


def _scalar_text(node: yaml.Node, built: Any) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return node.value
    if isinstance(node, yaml.MappingNode) and isinstance(built, dict):
        return {
            k.value: _scalar_text(v, built.get(k.value))
            for k, v in node.value
            if isinstance(k, yaml.ScalarNode) and k.value in built
        }
    return built


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where, without PyYAML's quote of the offending line (which may hold a secret)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def _read_yaml(path: Path) -> Any:
    """The config file as data, its secrets as the exact text written (see :func:`_untype_secrets`)."""
    loader = yaml.SafeLoader(path.read_text())
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    if isinstance(data, dict):
        _untype_secrets(node, data, Settings)
    return data


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key {dotted!r} sets inside a non-section")
        node[leaf] = value
    return nested


def _env_overrides(environ: typing.Mapping[str, str]) -> dict[str, Any]:
    flat = {}
    for name, value in environ.items():
        if not name.startswith("HOMEWARD_") or name in ("HOMEWARD_CONFIG", "HOMEWARD_ONLINE"):
            continue
        flat[name[len("HOMEWARD_") :].lower().replace("__", ".")] = value
    return _nest(flat)


def parse_assignments(pairs: typing.Iterable[str]) -> dict[str, Any]:
    """``["match.top_k=5", "data_dir=/x"]`` → nested overrides (values parsed later against the schema)."""
    flat = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--set expects KEY=VALUE, got {key!r}" if not sep else "--set expects KEY=VALUE, got no KEY"
            )
        flat[key.strip()] = value
    return _nest(flat)


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    environ: typing.Mapping[str, str] | None = None,
) -> Settings:
    """Build settings from defaults ← config file ← environment ← ``overrides`` (highest)."""
    environ = os.environ if environ is None else environ
    settings = Settings()
    config_file = config_file or environ.get("HOMEWARD_CONFIG")
    if config_file:
        path = Path(config_file)
        try:
            loaded = _read_yaml(path) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {_yaml_problem(exc)}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys, got {type(loaded).__name__}")
        settings = _apply(settings, loaded, f"config file {path}")
    settings = _apply(settings, _env_overrides(environ), "environment")
    if overrides:
        settings = _apply(settings, overrides, "command line")
    return settings
