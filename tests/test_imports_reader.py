"""The reading half of ``percorso import``: files and mappings to Segment messages or row errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from percorso.channels import ChannelClassifier, load_rules
from percorso.events import parse_message
from percorso.imports import (
    ImportFileError,
    ImportMapping,
    Row,
    RowError,
    count_rows,
    detect_format,
    read_rows,
)

CLASSIFIER = ChannelClassifier(load_rules())
VISITS = ImportMapping.from_options(
    event="Store Visit",
    channel="store",
    maps=["userId=customer_id", "timestamp=visited_at", "email=mail", "properties.store=store_code"],
)
CSV_HEADER = "customer_id,mail,visited_at,store_code,zip,spent,member\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def rows(path: Path, mapping: ImportMapping) -> list[Row | RowError]:
    items = list(read_rows(path, mapping))
    for item in items:
        if isinstance(item, Row):  # everything produced must pass the collector's validation
            event = parse_message(
                msgspec.json.encode(item.message),
                received_at=datetime.now(UTC),
                classifier=CLASSIFIER,
                historical=True,
            )
            assert event.message_id == item.message["messageId"]
    return items


def good(items: list[Row | RowError]) -> list[dict]:
    return [item.message for item in items if isinstance(item, Row)]


def errors(items: list[Row | RowError]) -> dict[int, str]:
    return {item.line: item.message for item in items if isinstance(item, RowError)}


def test_csv_rows_become_track_messages(tmp_path: Path) -> None:
    path = write(
        tmp_path / "visits.csv",
        "\ufeff"
        + CSV_HEADER
        + "C-1, Anna@Example.COM ,2026-03-01T09:30:00Z,MI01,02100,12.50,true\n"
        + "C-2,,2026-03-02 10:00:00+01:00,RM02,00185,7,false\n",
    )
    first, second = good(rows(path, VISITS))
    assert first["type"] == "track" and first["event"] == "Store Visit"
    assert first["userId"] == "C-1"
    assert first["timestamp"] == "2026-03-01T09:30:00Z"
    assert first["traits"] == {"email": "anna@example.com"}
    assert first["context"] == {
        "library": {"name": "percorso-import", "version": "1"},
        "channel": "store",
        "traits": {"email": "anna@example.com"},
    }
    assert first["properties"] == {"store": "MI01", "zip": "02100", "spent": 12.5, "member": True}
    assert first["messageId"].startswith("imp-") and len(first["messageId"]) == 36
    assert second["timestamp"] == "2026-03-02T09:00:00Z"
    assert second["properties"] == {"store": "RM02", "zip": "00185", "spent": 7, "member": False}
    assert "traits" not in second
    assert count_rows(path) == 2


def test_email_alone_identifies_the_person(tmp_path: Path) -> None:
    path = write(tmp_path / "v.csv", CSV_HEADER + ",b@x.it,2026-03-01T09:30:00Z,MI01,,,\n")
    [message] = good(rows(path, VISITS))
    assert "userId" not in message and message["context"]["traits"] == {"email": "b@x.it"}
    event = parse_message(msgspec.json.encode(message), received_at=datetime.now(UTC), classifier=CLASSIFIER)
    assert event.email == "b@x.it" and event.channel == "store"


def test_tsv_and_columns_named_like_targets(tmp_path: Path) -> None:
    path = write(
        tmp_path / "calls.tsv",
        "userId\ttimestamp\tevent\tChannel\tnotes\n"
        "u1\t2026-01-05T08:00:00Z\tCall Received\tCall Center\tasked about, billing\n",
    )
    [message] = good(rows(path, ImportMapping()))
    assert message["userId"] == "u1" and message["event"] == "Call Received"
    assert message["context"]["channel"] == "call-center"
    assert message["properties"] == {"notes": "asked about, billing"}


def test_ids_are_deterministic_and_independent_of_position(tmp_path: Path) -> None:
    body = "C-1,,2026-03-01T09:30:00Z,MI01,,,\nC-2,,2026-03-01T10:30:00Z,MI01,,,\n"
    path = write(tmp_path / "a.csv", CSV_HEADER + body)
    ids = [m["messageId"] for m in good(rows(path, VISITS))]
    assert ids == [m["messageId"] for m in good(rows(path, VISITS))]
    moved = write(tmp_path / "b.csv", CSV_HEADER + "C-9,,2026-03-01T08:00:00Z,TO01,,,\n" + body)
    assert [m["messageId"] for m in good(rows(moved, VISITS))][1:] == ids
    labelled = ImportMapping(**{**VISITS.__dict__, "source": "crm-2026"})
    assert next(m["messageId"] for m in good(rows(path, labelled))) != ids[0]


def test_identical_rows_get_distinct_ids(tmp_path: Path) -> None:
    line = "C-1,,2026-03-01T09:30:00Z,MI01,,,\n"
    path = write(
        tmp_path / "dups.csv", CSV_HEADER + line + "C-2,,2026-03-01T09:30:00Z,MI01,,,\n" + line + line
    )
    ids = [m["messageId"] for m in good(rows(path, VISITS))]
    assert len(set(ids)) == 4
    assert ids == [m["messageId"] for m in good(rows(path, VISITS))]


def test_mapped_message_id_is_used(tmp_path: Path) -> None:
    path = write(
        tmp_path / "o.csv", "order,cust,at\nO-17,u1,2026-02-01T00:00:00Z\n,u2,2026-02-01T00:00:00Z\n"
    )
    mapping = ImportMapping.from_options(
        event="Order Completed", maps=["messageId=order", "userId=cust", "timestamp=at"]
    )
    first, second = good(rows(path, mapping))
    assert first["messageId"] == "O-17" and second["messageId"].startswith("imp-")
    assert "order" not in first.get("properties", {})


def test_bad_csv_rows_have_the_right_line_numbers(tmp_path: Path) -> None:
    path = write(
        tmp_path / "bad.csv",
        CSV_HEADER
        + "C-1,,2026-03-01T09:30:00Z,MI01,,,\n"  # line 2
        + "C-2,,31/02/2026,MI01,,,\n"  # line 3: bad timestamp
        + 'C-3,,2026-03-01T09:30:00Z,"MI\n02\nnorth",,,\n'  # lines 4-6: one quoted record
        + ",,2026-03-01T09:30:00Z,MI01,,,\n"  # line 7: no identifier
        + "\n"  # line 8: blank
        + "C-5,,,MI01,,,\n"  # line 9: no timestamp
        + "C-6,not-an-email,2026-03-01T09:30:00Z,MI01,,,\n",
    )  # line 10: fine (has userId)
    items = rows(path, VISITS)
    assert [i.line for i in items] == [2, 3, 4, 7, 9, 10]
    errs = errors(items)
    assert errs[3] == (
        "column 'visited_at': '31/02/2026' is not a date-time (expected ISO 8601 or --timestamp-format)"
    )
    assert "no identifier" in errs[7] and "'customer_id'" in errs[7] and "'mail'" in errs[7]
    assert "'visited_at' is empty" in errs[9]
    assert good(items)[1]["properties"]["store"] == "MI\n02\nnorth"


def test_non_utf8_bytes_are_a_row_error(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes(
        CSV_HEADER.encode()
        + b"C-1,,2026-03-01T09:30:00Z,Citt\xe0,,,\n"
        + b"C-2,,2026-03-01T09:30:00Z,MI01,,,\n"
    )
    items = rows(path, VISITS)
    assert isinstance(items[0], RowError) and items[0].line == 2 and "not UTF-8" in items[0].message
    assert isinstance(items[1], Row) and items[1].line == 3


def test_missing_mapped_column_names_it(tmp_path: Path) -> None:
    path = write(tmp_path / "v.csv", "customer_id,visited_at\nC-1,2026-03-01T09:30:00Z\n")
    mapping = ImportMapping.from_options(
        event="Store Visit", maps=["userId=customer", "timestamp=visited_at"]
    )
    with pytest.raises(ImportFileError, match=r"'customer' \(for userId\).*'customer_id', 'visited_at'"):
        list(read_rows(path, mapping))


def test_mapping_problems_are_import_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ImportFileError, match="userId"):
        ImportMapping.from_options(maps=["userId"])
    with pytest.raises(ImportFileError, match="type 'alias'"):
        ImportMapping.from_options(type="alias")
    with pytest.raises(ImportFileError, match="Mars/Olympus"):
        ImportMapping.from_options(timezone="Mars/Olympus")
    with pytest.raises(ImportFileError, match="unknown target 'user'"):
        ImportMapping.from_options(maps=["user=id"])
    with pytest.raises(ImportFileError, match="unknown file type"):
        detect_format(tmp_path / "x.xlsx")
    path = write(tmp_path / "v.csv", "id,at\n1,2026-03-01T09:30:00Z\n")
    with pytest.raises(ImportFileError, match="event name"):
        list(read_rows(path, ImportMapping(columns={"userId": "id", "timestamp": "at"})))


def test_yaml_mapping(tmp_path: Path) -> None:
    spec = write(
        tmp_path / "map.yaml",
        """
type: identify
timezone: Europe/Rome
timestamp_format: "%d/%m/%Y %H:%M"
source: loyalty
columns:
  userId: card
  timestamp: joined
  traits.tier: level
""",
    )
    mapping = ImportMapping.from_yaml(spec)
    assert mapping.type == "identify" and mapping.columns["traits.tier"] == "level"
    path = write(
        tmp_path / "members.csv",
        "card,joined,level,points\n0042,15/07/2025 14:30,gold,120\n0043,15/01/2026 09:00,silver,0\n",
    )
    summer, winter = good(rows(path, mapping))
    assert summer["userId"] == "0042" and summer["timestamp"] == "2025-07-15T12:30:00Z"  # CEST, UTC+2
    assert winter["timestamp"] == "2026-01-15T08:00:00Z"  # CET, UTC+1
    assert summer["traits"] == {"tier": "gold", "points": 120}
    bad = write(tmp_path / "typo.yaml", "type: track\ncolums:\n  userId: id\n")
    with pytest.raises(ImportFileError, match=r"typo.yaml: unknown key 'colums'; did you mean 'columns'"):
        ImportMapping.from_yaml(bad)
    with pytest.raises(ImportFileError, match="keep_unmapped"):
        ImportMapping.from_yaml(write(tmp_path / "t.yaml", "keep_unmapped: maybe\n"))
    with pytest.raises(ImportFileError, match="not valid YAML"):
        ImportMapping.from_yaml(write(tmp_path / "y.yaml", "columns: [unclosed\n"))


def test_naive_timestamps_in_europe_rome(tmp_path: Path) -> None:
    path = write(
        tmp_path / "v.csv", CSV_HEADER + "C-1,,2026-03-01 09:30,MI01,,,\nC-2,,2026-07-01T09:30:00,MI01,,,\n"
    )
    mapping = ImportMapping(**{**VISITS.__dict__, "timezone": "Europe/Rome"})
    assert [m["timestamp"] for m in good(rows(path, mapping))] == [
        "2026-03-01T08:30:00Z",
        "2026-07-01T07:30:00Z",
    ]


def test_jsonl_rows_and_errors(tmp_path: Path) -> None:
    lines = [
        json.dumps(
            {
                "user": "u1",
                "at": "2026-03-01T09:30:00Z",
                "kind": "Webinar Attended",
                "session": {"title": "Intro", "minutes": 45},
                "tags": ["a", "b"],
            }
        ),
        "{not json",
        "",
        "[1, 2]",
        json.dumps({"user": 77, "at": 1772357400, "kind": "Webinar Attended"}),
        json.dumps({"user": None, "at": "2026-03-01T09:30:00Z", "kind": "Webinar Attended"}),
    ]
    path = write(tmp_path / "events.ndjson", "\n".join(lines) + "\n")
    mapping = ImportMapping.from_options(channel="events", maps=["userId=user", "timestamp=at", "event=kind"])
    items = rows(path, mapping)
    assert [i.line for i in items] == [1, 2, 4, 5, 6]
    errs = errors(items)
    assert errs[2].startswith("invalid JSON: ")
    assert errs[4] == "expected a JSON object, got an array"
    assert "no identifier" in errs[6]
    first, second = good(items)
    assert first["event"] == "Webinar Attended"
    assert first["properties"] == {"session": {"title": "Intro", "minutes": 45}, "tags": ["a", "b"]}
    assert second["userId"] == "77" and second["timestamp"] == "2026-03-01T09:30:00Z"
    assert count_rows(path) == 6


def test_parquet_rows(tmp_path: Path) -> None:
    table = pa.table(
        {
            "customer": ["C-1", "C-2", None],
            "bought_at": pa.array(
                [datetime(2026, 3, 1, 9, 30), datetime(2026, 7, 1, 9, 30), datetime(2026, 1, 1)],
                type=pa.timestamp("us"),
            ),
            "total": [19.99, 5.0, 1.0],
            "items": [[{"sku": "A", "qty": 2}], [], []],
            "paid_at": pa.array(
                [datetime(2026, 3, 1, 9, 31, tzinfo=UTC)] * 3, type=pa.timestamp("ms", tz="UTC")
            ),
        }
    )
    path = tmp_path / "orders.parquet"
    pq.write_table(table, path, row_group_size=2)
    mapping = ImportMapping.from_options(
        event="Order Completed",
        channel="store",
        timezone="Europe/Rome",
        maps=["userId=customer", "timestamp=bought_at"],
    )
    items = rows(path, mapping)
    assert count_rows(path) == 3
    first, second = good(items)
    assert first["timestamp"] == "2026-03-01T08:30:00Z" and second["timestamp"] == "2026-07-01T07:30:00Z"
    assert first["properties"] == {
        "total": 19.99,
        "items": [{"sku": "A", "qty": 2}],
        "paid_at": "2026-03-01T09:31:00Z",
    }
    assert errors(items) == {
        3: "no identifier: userId, anonymousId or email is required (columns 'customer' are empty)"
    }
    again = good(rows(path, mapping))
    assert [m["messageId"] for m in again] == [first["messageId"], second["messageId"]]
    with pytest.raises(ImportFileError, match="'client'"):
        list(
            read_rows(
                path, ImportMapping.from_options(event="x", maps=["userId=client", "timestamp=bought_at"])
            )
        )


def test_identify_group_and_page_calls(tmp_path: Path) -> None:
    path = write(
        tmp_path / "accounts.csv", "user,company,at,plan,seats\nu1,acme,2026-02-01T00:00:00Z,pro,12\n"
    )
    [group] = good(
        rows(
            path,
            ImportMapping.from_options(type="group", maps=["userId=user", "groupId=company", "timestamp=at"]),
        )
    )
    assert group["groupId"] == "acme" and group["traits"] == {"plan": "pro", "seats": 12}
    pages = write(
        tmp_path / "pages.csv",
        "anon,at,name,context.page.url\na-1,2026-02-01T00:00:00Z,Pricing,https://x.it/pricing\n",
    )
    [page] = good(
        rows(
            pages,
            ImportMapping.from_options(
                type="page", maps=["anonymousId=anon", "timestamp=at", "context.page.url=context.page.url"]
            ),
        )
    )
    assert page["name"] == "Pricing" and page["context"]["page"] == {"url": "https://x.it/pricing"}
