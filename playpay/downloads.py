"""Downloads: a file made for the request, or CSV lines streamed as they are written."""

from collections.abc import Iterable
from typing import IO

from django.http import FileResponse, StreamingHttpResponse

from playpay.tables import CONTENT_TYPES, TableFormat


def file_attachment(content: IO[bytes], *, name: str, file_format: str) -> FileResponse:
    return FileResponse(
        content, as_attachment=True, filename=name, content_type=CONTENT_TYPES[TableFormat(file_format)]
    )


def csv_attachment(lines: Iterable[str] | Iterable[bytes], *, name: str) -> StreamingHttpResponse:
    response = StreamingHttpResponse(lines, content_type=CONTENT_TYPES[TableFormat.CSV])
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response
