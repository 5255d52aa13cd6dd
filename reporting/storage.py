"""Where exports are kept: a private directory under VAR_DIR, served only through the admin."""

import os
from pathlib import Path

from django.conf import settings
from django.core.files.storage import FileSystemStorage


class ReportingStorage(FileSystemStorage):
    """Files with financial data are never public media; the admin checks permissions, then sends them.

    The location is read from the settings on every use, so that tests (and a changed VAR_DIR) need no reload.
    """

    @property
    def base_location(self) -> str:
        return str(Path(settings.VAR_DIR) / "reporting")

    @property
    def location(self) -> str:
        return os.path.abspath(self.base_location)

    def url(self, name: str | None) -> str:
        raise NotImplementedError("reporting files are downloaded through the admin, never by URL")


def reporting_storage() -> ReportingStorage:
    return ReportingStorage()
