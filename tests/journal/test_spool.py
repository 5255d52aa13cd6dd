"""The journal's spool on disk: what a crash leaves is handled, and two drainers never ship a segment twice."""

import fcntl
import json
import logging
import multiprocessing
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from journal import spool as spool_module
from journal.spool import Spool


def _document(writer: str, index: int) -> dict[str, Any]:
    return {"kind": "api_request", "correlation": {"request_id": f"{writer}-{index:05d}"}, "data": {"i": index}}


def test_records_are_shipped_in_order_and_a_shipped_segment_is_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for index in range(5):
        spool.append([_document("w", index)])
    assert spool.holds_own_records()
    assert spool.depth(cap=100) == 5
    shipped: list[list[dict[str, Any]]] = []
    assert spool.drain(shipped.append) == 5
    assert [d["data"]["i"] for batch in shipped for d in batch] == [0, 1, 2, 3, 4]
    assert not list(tmp_path.iterdir())
    assert not spool.holds_own_records()
    spool.append([_document("w", 5)])  # the drained segment is gone: a new one is started
    assert spool.depth(cap=100) == 1


def test_a_store_that_refuses_keeps_the_segment_for_the_next_drain(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([_document("w", 0), _document("w", 1)])

    def refuse(documents: list[dict[str, Any]]) -> None:
        raise ConnectionError("journal store down")

    with pytest.raises(ConnectionError):
        spool.drain(refuse)
    assert spool.depth(cap=100) == 2
    shipped: list[dict[str, Any]] = []
    assert spool.drain(shipped.extend) == 2
    assert [d["data"]["i"] for d in shipped] == [0, 1]


def test_a_line_cut_short_by_a_crash_is_dropped_and_the_rest_shipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path)
    spool.append([_document("w", 0)])
    spool.append([_document("w", 1)])
    (segment,) = tmp_path.iterdir()
    with segment.open("ab") as file:  # what a process that died inside write() leaves
        file.write(json.dumps(_document("w", 2)).encode()[:25])
    shipped: list[dict[str, Any]] = []
    with caplog.at_level(logging.WARNING, logger="journal.spool"):
        assert spool.drain(shipped.extend) == 2
    assert [d["data"]["i"] for d in shipped] == [0, 1]
    assert "cut short" in caplog.text
    assert not segment.exists()


def test_a_segment_of_a_process_that_died_is_drained_by_another(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    writer = context.Process(target=_append_records, args=(tmp_path, "dead", 3))
    writer.start()
    writer.join(30)
    assert writer.exitcode == 0
    survivor = Spool(tmp_path)
    assert not survivor.holds_own_records()  # not its records: its own may go straight to the store
    shipped: list[dict[str, Any]] = []
    assert survivor.drain(shipped.extend) == 3
    assert [d["correlation"]["request_id"] for d in shipped] == ["dead-00000", "dead-00001", "dead-00002"]


def test_a_segment_the_store_keeps_refusing_holds_back_no_other_writer_and_is_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = multiprocessing.get_context("fork").Process(target=_append_records, args=(tmp_path, "bad", 2))
    writer.start()
    writer.join(30)
    assert writer.exitcode == 0
    spool = Spool(tmp_path)
    shipped: list[str] = []

    def ship(documents: list[dict[str, Any]]) -> None:
        ids = [d["correlation"]["request_id"] for d in documents]
        if any(request_id.startswith("bad-") for request_id in ids):
            raise ValueError("a document the store cannot hold")
        shipped.extend(ids)

    with caplog.at_level(logging.ERROR, logger="journal.spool"):
        for attempt in range(spool_module.QUARANTINE_AFTER_FAILURES):
            spool.append([_document("good", attempt)])
            with pytest.raises(ValueError, match="cannot hold"):
                spool.drain(ship)
    assert shipped == [f"good-{index:05d}" for index in range(spool_module.QUARANTINE_AFTER_FAILURES)]
    assert "set aside" in caplog.text
    assert spool.drain(ship) == 0  # nothing left to hold it back, nothing raised
    (aside,) = (tmp_path / spool_module.QUARANTINE).iterdir()
    assert [json.loads(line)["correlation"]["request_id"] for line in aside.read_text().splitlines()] == [
        "bad-00000",
        "bad-00001",
    ]


def _append_records(directory: Path, writer: str, count: int) -> None:
    spool = Spool(directory)
    for index in range(count):
        spool.append([_document(writer, index)])


def _drain_while_writers_write(directory: Path, shipped_log: Path, writers_done: Any) -> None:
    spool = Spool(directory)

    def ship(documents: list[dict[str, Any]]) -> None:
        # One write under a lock: the log's order is the order the store would have taken them in.
        fd = os.open(shipped_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, b"".join(json.dumps(d).encode() + b"\n" for d in documents))
        finally:
            os.close(fd)

    while True:
        finished = writers_done.is_set()
        spool.drain(ship)
        if finished and not spool.segments():
            return


def test_two_drainers_racing_with_two_writers_ship_every_record_once_in_each_writers_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small segments, so that writers start many while drainers take them.
    monkeypatch.setattr(spool_module, "SEGMENT_MAX_RECORDS", 7)
    directory, shipped_log = tmp_path / "spool", tmp_path / "shipped.jsonl"
    context = multiprocessing.get_context("fork")
    writers_done = context.Event()
    writers = [context.Process(target=_append_records, args=(directory, name, 400)) for name in ("a", "b")]
    drainers = [
        context.Process(target=_drain_while_writers_write, args=(directory, shipped_log, writers_done))
        for _ in range(2)
    ]
    for process in [*drainers, *writers]:
        process.start()
    for process in writers:
        process.join(60)
        assert process.exitcode == 0
    writers_done.set()
    for process in drainers:
        process.join(60)
        assert process.exitcode == 0
    ids = [json.loads(line)["correlation"]["request_id"] for line in shipped_log.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 800
    by_writer: defaultdict[str, list[str]] = defaultdict(list)
    for request_id in ids:
        by_writer[request_id.split("-")[0]].append(request_id)
    for name in ("a", "b"):
        assert by_writer[name] == [f"{name}-{index:05d}" for index in range(400)]
    assert not spool_module.Spool(directory).segments()
