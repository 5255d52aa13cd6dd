"""The player page's extension point: sections that apps above payments add to it, without payments knowing them.

An app registers a builder from its admin module (loaded with the admin); for each player page the builder is
given the request and the player and answers a section (a title, a template and its context) or None to show
nothing (the person may not view it, or there is nothing to show). Sections follow the player's payments, in
the order registered.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.http import HttpRequest

from payments.selectors import Player


@dataclass(frozen=True)
class PlayerSection:
    title: str
    template: str  # rendered with the page's context plus `section` (this object)
    context: dict[str, Any] = field(default_factory=dict)


SectionBuilder = Callable[[HttpRequest, Player], PlayerSection | None]
_builders: list[SectionBuilder] = []


def register(builder: SectionBuilder) -> None:
    """Add a section to every player page (once, however often its module is loaded)."""
    if builder not in _builders:
        _builders.append(builder)


def player_sections(request: HttpRequest, player: Player) -> list[PlayerSection]:
    return [section for builder in _builders if (section := builder(request, player)) is not None]
