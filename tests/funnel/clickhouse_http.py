"""A stand-in ClickHouse HTTP server for tests: clickhouse-connect's HTTP transport talks to it, and chdb
(the same process's embedded ClickHouse) runs what it sends.

Enough of ClickHouse's HTTP interface for the client: the statement in the `query` parameter and/or the
body, `param_*` bound parameters, inserts as "INSERT ... FORMAT Native" plus the (lz4 or zstd compressed,
possibly chunked) data, answers in the format asked for, errors as status 500 with the exception code
header. Of the settings sent in the URL only max_execution_time is applied (to queries); answers are not
compressed.
"""

import json
import re
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import chdb
import lz4.frame  # type: ignore[import-untyped]

FORMAT = re.compile(r"\s+FORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
INSERT = re.compile(r"^\s*INSERT\s+INTO\s", re.IGNORECASE)
QUERY = re.compile(r"^\s*(SELECT|WITH)\s", re.IGNORECASE)
_lock = threading.Lock()


def _decode(body: bytes, encoding: str) -> bytes:
    """The body of an insert as clickhouse-connect compresses it (lz4 unless told otherwise)."""
    if encoding == "lz4":
        return bytes(lz4.frame.decompress(body))
    if encoding == "zstd":
        from backports import zstd

        return bytes(zstd.decompress(body))
    return body


class Handler(BaseHTTPRequestHandler):
    connection_: Any
    spool: Path

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._run(b"")

    def do_POST(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = bytearray()
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            body = bytearray(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        self._run(_decode(bytes(body), self.headers.get("Content-Encoding", "")))

    def _run(self, body: bytes) -> None:
        params = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
        if self.path.startswith("/ping"):
            self._answer(200, b"Ok.\n")
            return
        query = params.get("query", "")
        if not query and body[:7].upper() == b"INSERT ":
            # clickhouse-connect sends "INSERT INTO t (columns) FORMAT Native\n" and the data after it.
            statement, _, body = body.partition(b"\n")
            query = statement.decode()
        bind = {k.removeprefix("param_"): v for k, v in params.items() if k.startswith("param_")}
        try:
            with _lock:
                if query and INSERT.match(query):
                    data = self.spool / "insert.bin"
                    data.write_bytes(body)
                    match = FORMAT.search(query)
                    fmt = match.group(1) if match else "Native"
                    from_file = FORMAT.sub("", query) + f" FROM INFILE '{data}' FORMAT {fmt}"
                    self.connection_.query(from_file, "Native", params=bind)
                    result = b""
                else:
                    sql = (query + " " + body.decode()).strip() if query else body.decode()
                    match = FORMAT.search(sql)
                    fmt = match.group(1) if match else params.get("default_format", "TabSeparated")
                    sql = FORMAT.sub("", sql)
                    if QUERY.match(sql) and "max_execution_time" in params:
                        sql += f" SETTINGS max_execution_time = {float(params['max_execution_time'])}"
                    res = self.connection_.query(sql, fmt, params=bind)
                    result = res.bytes() if res is not None else b""
        except Exception as exc:
            text = str(exc)
            code = re.search(r"Code: (\d+)", text)
            self._answer(500, text.encode(), {"X-ClickHouse-Exception-Code": code.group(1) if code else "1"})
            return
        self._answer(200, result, {"X-ClickHouse-Format": fmt})

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-ClickHouse-Timezone", "UTC")
        self.send_header("X-ClickHouse-Summary", json.dumps({"read_rows": "0", "written_rows": "0"}))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def clickhouse_http_server() -> Iterator[str]:
    """A URL of a ClickHouse HTTP interface over this process's embedded ClickHouse (chdb://memory)."""
    with tempfile.TemporaryDirectory() as spool:
        handler = type("BoundHandler", (Handler,), {"connection_": chdb.connect(":memory:"), "spool": Path(spool)})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()
