"""Tables for download: rows written to CSV or XLSX as they come, never holding a whole table in memory.

Cells from outside (a refund reason, a carrier reference) never become spreadsheet formulas:
in XLSX every text is a text cell; in CSV, text that a spreadsheet would read as a formula is
prefixed with an apostrophe (OWASP "CSV injection"). The CSV rule is written twice, side by side:
`csv_text` for rows formatted in Python, `sql_csv_text` for CSV that PostgreSQL writes itself (COPY).
"""

import csv
import io
import re
import select
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import IO, Any
from xml.sax.saxutils import escape as xml_escape

import psycopg
from django.db import models
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE  # type: ignore[import-untyped]
from psycopg import pq
from xlsxwriter import Workbook  # type: ignore[import-untyped]


class TableFormat(models.TextChoices):
    CSV = "csv", "CSV"
    XLSX = "xlsx", "Excel (XLSX)"


CONTENT_TYPES = {
    TableFormat.CSV: "text/csv; charset=utf-8",
    TableFormat.XLSX: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# Signed numbers and masked phone numbers (+44740*****56) start like formulas but cannot run anything.
_HARMLESS = r"[-+]?[0-9*.]+"
_HARMLESS_RE = re.compile(_HARMLESS)


def csv_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date | Decimal | int):
        return str(value)
    text = str(value)
    if text.startswith(_FORMULA_START) and not _HARMLESS_RE.fullmatch(text):
        return "'" + text
    return text


def sql_csv_text(expression: str) -> str:
    """`csv_text` of a PostgreSQL text expression, for COPY ... (FORMAT csv). An empty text becomes NULL:
    COPY writes an empty string as `""`, the csv module as nothing, and NULL is written as nothing."""
    # The first character's code (0 for an empty text): a comparison of integers, not of one-letter texts.
    starts = ", ".join(str(ord(char)) for char in _FORMULA_START)
    guarded = (
        f"CASE WHEN ascii({expression}) IN ({starts}) AND {expression} !~ '^{_HARMLESS}$' "
        f"THEN '''' || {expression} ELSE {expression} END"
    )
    return f"NULLIF({guarded}, '')"


class _Echo:
    """A file-like object whose write returns what was written, so that csv.writer produces lines."""

    def write(self, value: str) -> str:
        return value


def copy_out_batches(copy: "psycopg.Copy", *, rows: int, timeout: float) -> Iterator[list[memoryview]]:
    """The rows of a `COPY ... TO STDOUT` under way, as PostgreSQL sends them (one message a row, each ending
    with its line break), in lists of up to `rows`.

    psycopg's `Copy.read` hands over one message per call through several generator frames: at a million rows,
    more CPU than PostgreSQL spends writing them. Here the messages libpq has received already are taken in a
    plain loop (`PQgetCopyData` without waiting), and only an empty buffer waits, through `Copy.read`. When
    the server ends the COPY, its final result is read here: waited for at most `timeout` seconds.
    """
    pgconn = copy.connection.pgconn
    take = pgconn.get_copy_data
    batch: list[memoryview] = []
    while True:
        size, data = take(1)  # 1: never waits; 0 when no whole row is buffered
        if size == 0:
            waited = copy.read()  # waits for the next row, or the end (nothing)
            if not waited:
                break
            data = memoryview(waited)
        elif size < 0:  # the server ended the COPY (or failed it): its result follows
            _finish_copy_out(pgconn, encoding=copy.connection.info.encoding, timeout=timeout)
            break
        batch.append(data)
        if len(batch) >= rows:
            yield batch
            batch = []
    if batch:
        yield batch


def _finish_copy_out(pgconn: pq.abc.PGconn, *, encoding: str, timeout: float) -> None:
    """Read the results that follow the end of a COPY out, every one (the connection is then ready for the
    next statement), and raise the server's error if it failed."""
    deadline = time.monotonic() + timeout
    failed = None
    while True:
        while pgconn.is_busy():
            left = deadline - time.monotonic()
            if left <= 0:
                raise psycopg.OperationalError(f"no result from the server {timeout:.0f} s after the end of a COPY")
            select.select([pgconn.socket], [], [], left)
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:
            break
        if result.status != pq.ExecStatus.COMMAND_OK and failed is None:
            failed = result
    if failed is not None:
        raise psycopg.errors.error_from_result(failed, encoding=encoding)


def csv_lines(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Iterator[str]:
    """The CSV text, one line at a time (for a StreamingHttpResponse or a file)."""
    writer = csv.writer(_Echo())
    yield writer.writerow([csv_text(cell) for cell in header])
    for row in rows:
        yield writer.writerow([csv_text(cell) for cell in row])


def write_csv(out: IO[bytes], header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """UTF-8 CSV into a binary file, which stays open afterwards."""
    text = io.TextIOWrapper(out, encoding="utf-8", newline="")
    try:
        for line in csv_lines(header, rows):
            text.write(line)
    finally:
        text.flush()
        text.detach()


def write_xlsx(out: IO[bytes] | str, header: Sequence[str], rows: Iterable[Sequence[Any]], title: str) -> None:
    """An XLSX written by XlsxWriter in constant-memory mode: each row goes to disk once the next one starts.

    Every text is a text cell (never a formula, a number or a link, whatever it looks like); datetimes are
    naive (UTC, as the column names say) and shown as `yyyy-mm-dd hh:mm:ss`.
    """
    workbook = Workbook(
        out,
        {
            "constant_memory": True,
            "strings_to_formulas": False,
            "strings_to_numbers": False,
            "strings_to_urls": False,
            "remove_timezone": True,
        },
    )
    sheet = workbook.add_worksheet(title[:31])
    time_format = workbook.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})
    day_format = workbook.add_format({"num_format": "yyyy-mm-dd"})

    def text(row: int, column: int, value: str) -> object:
        return sheet.write_string(row, column, ILLEGAL_CHARACTERS_RE.sub("\N{REPLACEMENT CHARACTER}", value))

    writers: dict[type, Callable[[int, int, Any], object]] = {
        str: text,
        int: sheet.write_number,
        float: sheet.write_number,
        Decimal: sheet.write_number,
        bool: sheet.write_boolean,
        datetime: lambda row, column, value: sheet.write_datetime(row, column, value, time_format),
        date: lambda row, column, value: sheet.write_datetime(row, column, value, day_format),
    }
    for column, name in enumerate(header):
        text(0, column, str(name))
    for number, row in enumerate(rows, start=1):
        for column, value in enumerate(row):
            if value is None or value == "":  # an empty cell, as a spreadsheet has it
                continue
            write = writers.get(type(value))
            if write is None:  # a UUID, a lazy translation...: its text
                text(number, column, str(value))
            else:
                write(number, column, value)
    workbook.close()


_NS = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PACKAGE_REL = "http://schemas.openxmlformats.org/package/2006/relationships"
_ML = "application/vnd.openxmlformats-officedocument.spreadsheetml"
_XLSX_PARTS = {
    "[Content_Types].xml": (
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        f'<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
        '<Default Extension="xml" ContentType="application/xml"/>'
        f'<Override PartName="/xl/workbook.xml" ContentType="{_ML}.sheet.main+xml"/>'
        f'<Override PartName="/xl/worksheets/sheet1.xml" ContentType="{_ML}.worksheet+xml"/>'
        f'<Override PartName="/xl/styles.xml" ContentType="{_ML}.styles+xml"/></Types>'
    ),
    "_rels/.rels": (
        f'<Relationships xmlns="{_PACKAGE_REL}">'
        f'<Relationship Id="rId1" Type="{_REL}/officeDocument" Target="xl/workbook.xml"/></Relationships>'
    ),
    "xl/_rels/workbook.xml.rels": (
        f'<Relationships xmlns="{_PACKAGE_REL}">'
        f'<Relationship Id="rId1" Type="{_REL}/worksheet" Target="worksheets/sheet1.xml"/>'
        f'<Relationship Id="rId2" Type="{_REL}/styles" Target="styles.xml"/></Relationships>'
    ),
    # Style 1: the date and time format of the time columns.
    "xl/styles.xml": (
        f"<styleSheet {_NS}>"
        '<numFmts count="1"><numFmt numFmtId="164" formatCode="yyyy-mm-dd hh:mm:ss"/></numFmts>'
        '<fonts count="1"><font><sz val="11"/><name val="Calibri"/></font></fonts>'
        '<fills count="2"><fill><patternFill patternType="none"/></fill>'
        '<fill><patternFill patternType="gray125"/></fill></fills>'
        '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
        '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
        '<cellXfs count="2"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
        '<xf numFmtId="164" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1"/></cellXfs>'
        '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
        "</styleSheet>"
    ),
}


def write_xlsx_rows(out: IO[bytes], header: Sequence[str], rows: Iterable[bytes], *, title: str) -> None:
    """An XLSX of one sheet whose rows come ready-made, each a SpreadsheetML `<row>` element (PostgreSQL
    writes them for exports: `reporting.resources.sql_xlsx_cell`); only the package around them is made
    here. Cells carry no references: each row and cell follows the one before."""
    cells = "".join(f"<c t='inlineStr'><is><t xml:space='preserve'>{_xml_escape(name)}</t></is></c>" for name in header)
    workbook = (
        f'<workbook {_NS} xmlns:r="{_REL}"><sheets>'
        f'<sheet name="{_xml_escape(title[:31])}" sheetId="1" r:id="rId1"/></sheets></workbook>'
    )
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as package:
        for name, xml in {**_XLSX_PARTS, "xl/workbook.xml": workbook}.items():
            package.writestr(name, '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n' + xml)
        with package.open("xl/worksheets/sheet1.xml", "w", force_zip64=True) as sheet:
            sheet.write(f'<?xml version="1.0" encoding="UTF-8"?>\n<worksheet {_NS}><sheetData>'.encode())
            sheet.write(f"<row>{cells}</row>".encode())
            chunk: list[bytes] = []
            for row in rows:
                chunk.append(row)
                if len(chunk) == 2000:  # many small rows, few calls of the compressor
                    sheet.write(b"".join(chunk))
                    chunk.clear()
            sheet.write(b"".join(chunk))
            sheet.write(b"</sheetData></worksheet>")


def _xml_escape(text: str) -> str:
    return str(ILLEGAL_CHARACTERS_RE.sub("\N{REPLACEMENT CHARACTER}", xml_escape(text, {"'": "&apos;", '"': "&quot;"})))


def write_table(
    out: IO[bytes], header: Sequence[str], rows: Iterable[Sequence[Any]], *, file_format: str, title: str
) -> None:
    """`rows` under `header` as CSV or XLSX (`TableFormat`), whichever is asked for."""
    if TableFormat(file_format) == TableFormat.XLSX:
        write_xlsx(out, header, rows, title=title)
    else:
        write_csv(out, header, rows)


def temporary_file(write: Callable[[IO[bytes]], object]) -> IO[bytes]:
    """What `write` writes, in an anonymous temporary file, rewound; it disappears when closed (by a FileResponse)."""
    out = tempfile.TemporaryFile()  # noqa: SIM115  # handed to the caller open
    try:
        write(out)
    except BaseException:
        out.close()
        raise
    out.seek(0)
    return out
