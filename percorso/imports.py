"""Reading offline touchpoints (CSV, TSV, JSONL, Parquet) as Segment-spec messages, row by row.

Each row becomes a message dict for :func:`percorso.events.parse_message`, or a :class:`RowError`
naming its line and the problem. Nothing here touches the store or the network.
"""

from __future__ import annotations

import base64
import csv
import difflib
import hashlib
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import yaml

from percorso.channels import valid_channel_name
from percorso.events import normalise_email
from percorso.values import INT_MAX, INT_MIN, json_number, read_json

CALLS = ("track", "identify", "page", "group")
TOP_TARGETS = (
    "messageId",
    "userId",
    "anonymousId",
    "email",
    "timestamp",
    "event",
    "name",
    "channel",
    "groupId",
)
NESTED_TARGETS = ("properties", "traits", "context")
LIBRARY = {"name": "percorso-import", "version": "1"}
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}

_BOM = b"\xef\xbb\xbf"
# Up to 15 digits: larger integers (card numbers, long ids) lose precision as JSON numbers in many clients.
_NUMBER = re.compile(r"-?(?:0|[1-9]\d{0,14})(?:\.\d+)?(?:[eE][+-]?\d{1,3})?\Z")
_BOOLS = {"true": True, "false": False, "TRUE": True, "FALSE": False, "True": True, "False": False}
_encode = msgspec.json.Encoder(order="sorted").encode
_decode = msgspec.json.decode
_CACHE_LIMIT = 100_000
_PARQUET_BATCH = 8_192


class ImportFileError(Exception):
    """The file or the mapping cannot be used at all; the message says why."""


@dataclass(frozen=True)
class RowError:
    """A row that cannot become a message: its 1-based line and what is wrong."""

    line: int
    message: str


@dataclass(frozen=True)
class Row:
    """A row turned into a Segment message."""

    line: int
    message: dict


@dataclass(frozen=True)
class ImportMapping:
    """How the columns of an import file become the fields of a Segment message."""

    type: str = "track"
    event: str | None = None
    channel: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    keep_unmapped: bool = True
    timestamp_format: str | None = None
    timezone: str = "UTC"
    source: str | None = None

    def __post_init__(self) -> None:
        if self.type not in CALLS:
            raise ImportFileError(f"type {self.type!r} is not one of {', '.join(CALLS)}")
        _zone(self.timezone)
        if self.event is not None and not self.event.strip():
            raise ImportFileError("event: the event name is empty")
        if self.channel is not None and not valid_channel_name(_slug(self.channel)):
            raise ImportFileError(f"channel {self.channel!r} is not a channel name (letters, digits and '-')")
        if self.timestamp_format is not None and "%" not in self.timestamp_format:
            raise ImportFileError(
                f"timestamp format {self.timestamp_format!r} has no % directives, e.g. '%d/%m/%Y %H:%M'"
            )
        for target, source in self.columns.items():
            _check_target(target)
            if not isinstance(source, str) or not source:
                raise ImportFileError(f"columns.{target}: the source column name is empty")

    @classmethod
    def from_yaml(cls, path: Path) -> ImportMapping:
        """Reads a mapping from a YAML file with the same keys as this class."""
        path = Path(path)
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ImportFileError(f"{path}: cannot read the mapping: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ImportFileError(f"{path}: not UTF-8 text (byte {exc.start})") from None
        except yaml.YAMLError as exc:
            raise ImportFileError(f"{path}: not valid YAML: {exc}") from None
        if document is None:
            document = {}
        if not isinstance(document, dict):
            raise ImportFileError(f"{path}: expected a mapping of keys (type, event, columns, …)")
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in document.items():
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(known)})"
                raise ImportFileError(f"{path}: unknown key {key!r}{hint}")
            values[key] = _yaml_value(path, key, value)
        try:
            return cls(**values)
        except ImportFileError as exc:
            raise ImportFileError(f"{path}: {exc}") from None

    @classmethod
    def from_options(
        cls,
        *,
        type: str = "track",
        event: str | None = None,
        channel: str | None = None,
        maps: Iterable[str] = (),
        timestamp_format: str | None = None,
        timezone: str = "UTC",
        source: str | None = None,
    ) -> ImportMapping:
        """Builds a mapping from command-line options; ``maps`` are ``target=column`` strings."""
        columns: dict[str, str] = {}
        for item in maps:
            target, sep, column = item.partition("=")
            target, column = target.strip(), column.strip()
            if not sep or not target or not column:
                raise ImportFileError(f"--map {item!r}: expected TARGET=COLUMN, e.g. userId=customer_id")
            if target in columns:
                raise ImportFileError(
                    f"--map {item!r}: {target} is already mapped to column {columns[target]!r}"
                )
            columns[target] = column
        return cls(
            type=type.strip().lower(),
            event=event,
            channel=channel,
            columns=columns,
            timestamp_format=timestamp_format,
            timezone=timezone,
            source=source,
        )


def _yaml_value(path: Path, key: str, value: Any) -> Any:
    if key == "columns":
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ImportFileError(
                f"{path}: columns must be a mapping of target: column, e.g. userId: customer_id"
            )
        for target, column in value.items():
            if not isinstance(target, str) or not isinstance(column, (str, int)) or isinstance(column, bool):
                raise ImportFileError(f"{path}: columns.{target}: expected a column name, got {column!r}")
        return {target: str(column) for target, column in value.items()}
    if key == "keep_unmapped":
        if not isinstance(value, bool):
            raise ImportFileError(f"{path}: keep_unmapped must be true or false, got {value!r}")
        return value
    if value is None and key in ("event", "channel", "timestamp_format", "source"):
        return None
    if not isinstance(value, str):
        raise ImportFileError(f"{path}: {key} must be a string, got {value!r}")
    return value


def _check_target(target: str) -> None:
    if target in TOP_TARGETS:
        return
    head, _, rest = target.partition(".")
    if head in NESTED_TARGETS and rest and all(rest.split(".")):
        return
    raise ImportFileError(
        f"unknown target {target!r}: use one of {', '.join(TOP_TARGETS)} or properties.KEY, traits.KEY, context.KEY"
    )


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ImportFileError(
            f"timezone {name!r} is not a known time zone, e.g. Europe/Rome or UTC"
        ) from None


def _slug(value: str) -> str:
    return value.strip().lower().replace(" ", "-").replace("_", "-")


def detect_format(path: Path) -> str:
    """The format of an import file from its extension."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ImportFileError(
            f"{Path(path).name}: unknown file type; use .csv, .tsv, .jsonl, .ndjson or .parquet"
        )
    return fmt


def count_rows(path: Path) -> int | None:
    """A cheap row count for a progress bar (lines for text files; quoted newlines may inflate it)."""
    path = Path(path)
    fmt = detect_format(path)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        lines, last = 0, b"\n"
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
        if last != b"\n":
            lines += 1
        return max(lines - 1, 0) if fmt in ("csv", "tsv") else lines
    except OSError as exc:
        raise ImportFileError(f"{path.name}: cannot read: {exc.strerror or exc}") from None
    except Exception:  # a broken Parquet footer is reported by read_rows with a proper message
        return None


def read_rows(path: Path, mapping: ImportMapping) -> Iterator[Row | RowError]:
    """Streams the rows of ``path`` as messages or row errors, in file order."""
    path = Path(path)
    fmt = detect_format(path)
    builder = _Builder(mapping, path.name)
    if fmt == "parquet":
        return _parquet_rows(path, builder)
    if fmt == "jsonl":
        return _jsonl_rows(path, builder)
    return _csv_rows(path, builder, "\t" if fmt == "tsv" else ",")


def _open(path: Path) -> Any:
    try:
        return path.open("rb")
    except OSError as exc:
        raise ImportFileError(f"{path.name}: cannot read: {exc.strerror or exc}") from None


def _csv_rows(path: Path, builder: _Builder, delimiter: str) -> Iterator[Row | RowError]:
    bad: dict[int, int] = {}  # physical line -> byte offset of the first byte that is not UTF-8

    def lines(handle: Any) -> Iterator[str]:
        offset = 0
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(_BOM):
                raw, offset = raw[3:], 3
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad[number] = offset + exc.start
                yield raw.decode("utf-8", errors="replace")
            offset += len(raw)

    with _open(path) as handle:
        reader = csv.reader(lines(handle), delimiter=delimiter)
        header: list[str] | None = None
        end = 0
        while True:
            start = end + 1
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise ImportFileError(
                    f"{path.name}, line {start}: cannot parse: {exc} (an unclosed quote?)"
                ) from None
            end = reader.line_num
            if not record or (len(record) == 1 and not record[0].strip()):
                continue
            broken = [n for n in range(start, end + 1) if n in bad] if bad else None
            if header is None:
                if broken:
                    raise ImportFileError(
                        f"{path.name}: the header is not UTF-8 text (byte {bad[broken[0]]}); "
                        "save the file as UTF-8"
                    )
                header = _header(record, path.name)
                plan = builder.plan(header, strict=True)
                width = len(header)
                continue
            if broken:
                yield RowError(
                    start, f"not UTF-8 text (byte {bad[broken[0]]} of the file); save the file as UTF-8"
                )
                continue
            if len(record) != width:
                if len(record) > width and any(v.strip() for v in record[width:]):
                    yield RowError(
                        start, f"has {len(record)} fields but the header has {width} (a missing quote?)"
                    )
                    continue
                record = (record + [""] * width)[:width]
            yield builder.row(start, dict(zip(header, record, strict=True)), plan, _csv_value)
        if header is None:
            raise ImportFileError(f"{path.name}: the file is empty (no header row)")


def _header(record: list[str], name: str) -> list[str]:
    header = [col.strip() or f"column_{i}" for i, col in enumerate(record, start=1)]
    seen: set[str] = set()
    for col in header:
        if col in seen:
            raise ImportFileError(f"{name}: column {col!r} appears twice in the header")
        seen.add(col)
    return header


def _jsonl_rows(path: Path, builder: _Builder) -> Iterator[Row | RowError]:
    plans: dict[tuple[str, ...], _Plan] = {}
    with _open(path) as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(_BOM):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                record = _decode(raw)
            except msgspec.ValidationError:  # a number outside the value domain: read as its text
                record = read_json(raw)
            except msgspec.DecodeError as exc:
                yield RowError(number, f"invalid JSON: {exc}")
                continue
            if not isinstance(record, dict):
                yield RowError(number, f"expected a JSON object, got {_json_kind(record)}")
                continue
            keys = tuple(record)
            plan = plans.get(keys)
            if plan is None:
                if len(plans) > 1_000:  # rows with ever-changing key sets: do not grow without bound
                    plans.clear()
                plan = plans[keys] = builder.plan(list(keys), strict=False)
            yield builder.row(number, record, plan, _same)


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _parquet_rows(path: Path, builder: _Builder) -> Iterator[Row | RowError]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise ImportFileError(f"{path.name}: not a readable Parquet file: {exc}") from None
    names = list(parquet.schema_arrow.names)
    plan = builder.plan(names, strict=True)
    # Without unmapped columns to keep, the others need not be decoded at all.
    wanted = names if builder.mapping.keep_unmapped else [n for n in names if n in plan.used]
    number = 0
    try:
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH, columns=wanted):
            columns = [column.to_pylist() for column in batch.columns]
            for values in zip(*columns, strict=True):
                number += 1
                yield builder.row(number, dict(zip(wanted, values, strict=True)), plan, _jsonable)
    except (OSError, pa.ArrowException) as exc:
        raise ImportFileError(f"{path.name}: cannot read row {number + 1}: {exc}") from None


def _same(value: Any) -> Any:
    return value


def _csv_value(text: str) -> Any:
    """Numbers and booleans from CSV text; leading zeros (zip codes, phone numbers) stay text."""
    first = text[:1]
    if (first.isdigit() or first == "-") and _NUMBER.match(text):
        return json_number(text)
    return _BOOLS.get(text, text)


def _jsonable(value: Any) -> Any:
    """Parquet values as JSON values: date-times as ISO 8601 UTC, decimals as numbers, bytes as base64."""
    kind = type(value)
    if kind is str or kind is int or kind is bool:
        return value
    if kind is float:
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        return _iso(value if value.tzinfo else value.replace(tzinfo=UTC))
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        if value == value.to_integral_value() and INT_MIN <= value <= INT_MAX:
            return int(value)
        number = float(value)
        return number if math.isfinite(number) and (number or not value) else str(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list) and value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
        return {str(k): _jsonable(v) for k, v in value}  # a Parquet MAP column
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if value is None else str(value)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class _Plan:
    """Which column feeds which message field, resolved against one header."""

    __slots__ = (
        "channel",
        "email",
        "event",
        "ids",
        "message_id",
        "name",
        "nested",
        "timestamp",
        "unmapped",
        "used",
    )

    def __init__(self) -> None:
        self.message_id: str | None = None
        self.ids: list[tuple[str, str]] = []
        self.email: str | None = None
        self.timestamp: str | None = None
        self.event: str | None = None
        self.name: str | None = None
        self.channel: str | None = None
        self.nested: list[tuple[str, str, tuple[str, ...]]] = []
        self.unmapped: list[str] = []
        self.used: set[str] = set()


class _Builder:
    """Turns one file's records into messages with one mapping."""

    def __init__(self, mapping: ImportMapping, filename: str):
        self.mapping = mapping
        self.filename = filename
        self.zone = _zone(mapping.timezone)
        self.extra = "traits" if mapping.type in ("identify", "group") else "properties"
        # The call type is mixed in so one file imported as track and as identify gives distinct messages.
        self.prefix = f"{mapping.source or ''}\x1f{mapping.type}\x1f".encode()
        self.seen: set[bytes] = set()
        self.repeats: dict[bytes, int] = {}
        self.times: dict[Any, str | None] = {}

    def plan(self, columns: list[str], *, strict: bool) -> _Plan:
        """Resolves the mapping against the file's columns; ``strict`` files must have every mapped column."""
        mapping, plan = self.mapping, _Plan()
        targets = dict(mapping.columns)
        present = set(columns)
        if strict:
            missing = [f"{src!r} (for {target})" for target, src in targets.items() if src not in present]
            if missing:
                raise ImportFileError(
                    f"{self.filename}: mapped column{'s' if len(missing) > 1 else ''} not in the file: "
                    f"{', '.join(missing)}. Columns in the file: {', '.join(map(repr, columns))}"
                )
        # A column named like a target (userId, email, timestamp…) feeds it unless mapped otherwise.
        auto = [t for t in TOP_TARGETS if t not in targets]
        if mapping.type != "page":
            auto.remove("name") if "name" in auto else None
        if mapping.type != "group":
            auto.remove("groupId") if "groupId" in auto else None
        lowered: dict[str, list[str]] = {}
        for col in columns:
            lowered.setdefault(col.lower(), []).append(col)
        for target in auto:
            if target in present:
                targets[target] = target
            elif len(lowered.get(target.lower(), ())) == 1:
                targets[target] = lowered[target.lower()][0]
        for target, src in targets.items():
            plan.used.add(src)
            if target in ("userId", "anonymousId", "groupId"):
                plan.ids.append((target, src))
            elif target == "messageId":
                plan.message_id = src
            elif target in ("email", "timestamp", "event", "name", "channel"):
                setattr(plan, target, src)
            else:
                head, _, rest = target.partition(".")
                plan.nested.append((src, head, tuple(rest.split("."))))
        if mapping.keep_unmapped:
            plan.unmapped = [col for col in columns if col not in plan.used]
        if strict:
            where = f"{self.filename}: "
            if plan.timestamp is None:
                raise ImportFileError(
                    f"{where}no timestamp column: map one with --map timestamp=COLUMN. "
                    f"Columns in the file: {', '.join(map(repr, columns))}"
                )
            if not any(t in ("userId", "anonymousId") for t, _ in plan.ids) and plan.email is None:
                raise ImportFileError(
                    f"{where}no identifier column: map userId, anonymousId or email, e.g. "
                    f"--map userId=COLUMN. Columns in the file: {', '.join(map(repr, columns))}"
                )
            if mapping.type == "track" and mapping.event is None and plan.event is None:
                raise ImportFileError(
                    f"{where}track needs an event name: --event 'Store Visit' or --map event=COLUMN"
                )
            if mapping.type == "group" and not any(t == "groupId" for t, _ in plan.ids):
                raise ImportFileError(f"{where}group needs a groupId column: --map groupId=COLUMN")
        return plan

    def row(
        self, line: int, record: dict[str, Any], plan: _Plan, convert: Callable[[Any], Any]
    ) -> Row | RowError:
        """One record as a message, or the first problem found in it."""
        mapping = self.mapping
        message: dict[str, Any] = {"type": mapping.type}
        context: dict[str, Any] = {"library": LIBRARY}
        bags: dict[str, dict[str, Any]] = {"properties": {}, "traits": {}, "context": context}

        for target, src in plan.ids:
            value = _identifier(record.get(src))
            if value is False:
                return RowError(
                    line, f"column {src!r}: {record.get(src)!r} is not an identifier (text or a number)"
                )
            if value is not None:
                message[target] = value
        if plan.email is not None:
            raw = record.get(plan.email)
            if raw is not None and raw != "":
                email = normalise_email(raw) if isinstance(raw, str) else None
                if email is None:
                    if "userId" not in message and "anonymousId" not in message:
                        return RowError(
                            line, f"column {plan.email!r}: {str(raw)[:64]!r} is not an email address"
                        )
                    if isinstance(raw, str) and raw.strip():
                        bags["traits"]["email"] = raw.strip().lower()
                else:
                    bags["traits"]["email"] = email
                    context["traits"] = {"email": email}
        if "userId" not in message and "anonymousId" not in message and "traits" not in context:
            sources = [src for t, src in plan.ids if t != "groupId"] + ([plan.email] if plan.email else [])
            named = ", ".join(map(repr, sources)) if sources else "none mapped"
            return RowError(
                line, f"no identifier: userId, anonymousId or email is required (columns {named} are empty)"
            )
        if mapping.type == "group" and "groupId" not in message:
            return RowError(
                line,
                "no groupId: a group call needs one"
                + (
                    f" (column {group_src!r} is empty)"
                    if (group_src := dict(plan.ids).get("groupId"))
                    else ""
                ),
            )

        if plan.timestamp is None:
            return RowError(line, "no timestamp: map a column with --map timestamp=COLUMN")
        stamp = self.timestamp(record.get(plan.timestamp))
        if stamp is None:
            value = record.get(plan.timestamp)
            if value is None or value == "":
                return RowError(line, f"column {plan.timestamp!r} is empty: a timestamp is required")
            expected = (
                f"expected the format {mapping.timestamp_format!r}"
                if mapping.timestamp_format
                else "expected ISO 8601 or --timestamp-format"
            )
            return RowError(
                line, f"column {plan.timestamp!r}: {str(value)[:64]!r} is not a date-time ({expected})"
            )
        message["timestamp"] = stamp

        for key, column in (("event", plan.event), ("name", plan.name)):
            if column is not None:
                cell = record.get(column)
                if cell is not None and cell != "":
                    message[key] = str(cell).strip()
        if "event" not in message and mapping.event is not None:
            message["event"] = mapping.event
        if mapping.type == "track" and not message.get("event"):
            detail = (
                f" (column {plan.event!r} is empty)" if plan.event else ": use --event or --map event=COLUMN"
            )
            return RowError(line, f"no event name{detail}")
        channel = record.get(plan.channel) if plan.channel is not None else None
        if channel is not None and channel != "":
            context["channel"] = _slug(str(channel))
        elif mapping.channel is not None:
            context["channel"] = _slug(mapping.channel)

        for src, bag, path in plan.nested:
            value = record.get(src)
            if value is None or value == "":
                continue
            _put(bags[bag], path, value if bag == "context" and convert is _csv_value else convert(value))
        extra = bags[self.extra]
        for col in plan.unmapped:
            value = record.get(col)
            if value is not None and value != "":
                value = convert(value)
                if value is not None:
                    extra[col] = value
        for bag in ("properties", "traits"):
            if bags[bag]:
                message[bag] = bags[bag]
        message["context"] = context

        message_id = record.get(plan.message_id) if plan.message_id is not None else None
        if message_id is None or message_id == "" or isinstance(message_id, bool):
            message_id = self.message_id(record)
        message["messageId"] = str(message_id).strip()
        return Row(line, message)

    def message_id(self, record: dict[str, Any]) -> str:
        """``imp-`` + a hash of the row's content and how many identical rows came before it."""
        content = self.prefix + _encode(record)
        digest = hashlib.sha256(content + b"\x1f0").hexdigest()
        # 8 bytes of the first digest identify identical rows; a rare collision still gives a unique id.
        key = bytes.fromhex(digest[:16])
        if key in self.seen:
            occurrence = self.repeats.get(key, 1)
            self.repeats[key] = occurrence + 1
            digest = hashlib.sha256(content + b"\x1f%d" % occurrence).hexdigest()
        else:
            self.seen.add(key)
        return "imp-" + digest[:32]

    def timestamp(self, value: Any) -> str | None:
        """An ISO 8601 UTC string, or None when the value is not a date-time."""
        if isinstance(value, bool):
            return None
        try:
            cached = self.times.get(value)
        except TypeError:
            return None
        if cached is not None:
            return cached
        result = self._parse_time(value)
        if result is not None:
            if len(self.times) >= _CACHE_LIMIT:
                self.times.clear()
            self.times[value] = result
        return result

    def _parse_time(self, value: Any) -> str | None:
        if isinstance(value, bool) or value is None:
            return None
        parsed: datetime | None
        if isinstance(value, datetime):
            parsed = value
        elif isinstance(value, date):
            parsed = datetime(value.year, value.month, value.day)
        elif isinstance(value, (int, float)):
            parsed = _epoch(value)
        elif isinstance(value, str):
            text = value.strip()
            try:
                if self.mapping.timestamp_format:
                    parsed = datetime.strptime(text, self.mapping.timestamp_format)
                elif text.isdigit() and len(text) >= 9:
                    parsed = _epoch(int(text))
                else:
                    parsed = datetime.fromisoformat(text)
            except (ValueError, OverflowError):
                return None
        else:
            return None
        if parsed is None:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=self.zone)
        try:
            return _iso(parsed)
        except (OverflowError, ValueError):
            return None


def _epoch(value: float) -> datetime | None:
    """Unix seconds, or milliseconds when the number is too large to be seconds."""
    if not math.isfinite(value):
        return None
    seconds = value / 1000 if abs(value) >= 1e11 else value
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _identifier(value: Any) -> str | bool | None:
    """An identifier as text; None when absent, False when the value cannot be one."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        return value or None
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else str(value)
    if isinstance(value, Decimal):
        return str(value)
    return False


def _put(bag: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        inner = bag.get(key)
        if not isinstance(inner, dict):
            inner = bag[key] = {}
        bag = inner
    bag[path[-1]] = value
