"""The base of every domain error: a stable machine code, a title and the HTTP status the API maps it to."""

from typing import Any, ClassVar


class DomainError(Exception):
    """A business rule said no. Subclasses set `code`, `title` and `http_status`."""

    code: ClassVar[str] = "domain_error"
    title: ClassVar[str] = "The request cannot be carried out"
    http_status: ClassVar[int] = 422

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        self.detail = detail or self.title
        self.extra = extra
        super().__init__(self.detail)


def all_domain_errors() -> list[type[DomainError]]:
    """Every concrete error type, for the problem-type catalogue."""
    found: dict[str, type[DomainError]] = {}
    stack: list[type[DomainError]] = [DomainError]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls is not DomainError:
            found.setdefault(cls.code, cls)
    return sorted(found.values(), key=lambda cls: cls.code)
