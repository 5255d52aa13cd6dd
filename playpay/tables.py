"""Tables for download: rows written to CSV or XLSX as they come, never holding a whole table in memory.

Cells from outside (a refund reason, a carrier reference) never become spreadsheet formulas:
in XLSX every text is a text cell; in CSV, text that a spreadsheet would read as a formula is
prefixed with an apostrophe (OWASP "CSV injection").
"""

import csv
import io
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import IO, Any

from django.db import models
from openpyxl import Workbook  # type: ignore[import-untyped]
from openpyxl.cell import WriteOnlyCell  # type: ignore[import-untyped]
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE  # type: ignore[import-untyped]


class TableFormat(models.TextChoices):
    CSV = "csv", "CSV"
    XLSX = "xlsx", "Excel (XLSX)"


CONTENT_TYPES = {
    TableFormat.CSV: "text/csv; charset=utf-8",
    TableFormat.XLSX: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# Signed numbers and masked phone numbers (+44740*****56) start like formulas but cannot run anything.
_HARMLESS = re.compile(r"^[+-]?[\d*.]+$")


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
    if text.startswith(_FORMULA_START) and not _HARMLESS.match(text):
        return "'" + text
    return text


class _Echo:
    """A file-like object whose write returns what was written, so that csv.writer produces lines."""

    def write(self, value: str) -> str:
        return value


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
    """An XLSX in openpyxl's write-only mode: rows go to disk as they are appended."""
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet(title=title[:31])
    sheet.append(list(header))
    for row in rows:
        sheet.append([_xlsx_cell(sheet, value) for value in row])
    workbook.save(out)


def write_table(
    out: IO[bytes], header: Sequence[str], rows: Iterable[Sequence[Any]], *, file_format: str, title: str
) -> None:
    """`rows` under `header` as CSV or XLSX (`TableFormat`), whichever is asked for."""
    if TableFormat(file_format) == TableFormat.XLSX:
        write_xlsx(out, header, rows, title=title)
    else:
        write_csv(out, header, rows)


def _xlsx_cell(sheet: Any, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    cell = WriteOnlyCell(sheet, value=ILLEGAL_CHARACTERS_RE.sub("\N{REPLACEMENT CHARACTER}", value))
    cell.data_type = "s"  # never a formula, even when it starts with "="
    return cell


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
