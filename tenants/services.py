"""Game-backend apps and their API keys."""

import secrets
from dataclasses import dataclass

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from playpay.refcache import RefCache
from tenants.models import ApiKey, App

KEY_PREFIX_BYTES = 6

_keys: RefCache[ApiKey] = RefCache("API keys by prefix", watch=(ApiKey, App))


@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    raw_key: str  # shown once to the person who asked for it; never stored


def issue_api_key(*, app: App, label: str = "", reason: str = "") -> IssuedKey:
    """A new API key for `app`, in the form `pp_<prefix>_<secret>`; `reason` goes to the key's history."""
    prefix = secrets.token_hex(KEY_PREFIX_BYTES)
    raw_key = f"pp_{prefix}_{secrets.token_urlsafe(32)}"
    api_key = ApiKey(app=app, prefix=prefix, key_hash=ApiKey.hash(raw_key), label=label)
    api_key._change_reason = reason  # type: ignore[attr-defined]  # read by django-simple-history
    api_key.save()
    return IssuedKey(api_key=api_key, raw_key=raw_key)


def create_app(*, name: str, webhook_url: str = "") -> tuple[App, IssuedKey]:
    with transaction.atomic():
        app = App.objects.create(name=name, webhook_url=webhook_url)
        return app, issue_api_key(app=app, label="initial")


def revoke_api_key(*, api_key: ApiKey, reason: str = "") -> None:
    """Revoke the key; other processes stop accepting it within REFERENCE_CACHE_SECONDS. `reason` goes to the
    key's history."""
    with transaction.atomic():
        locked = ApiKey.objects.select_for_update().get(pk=api_key.pk)
        if locked.revoked_at is not None:
            return
        locked.revoked_at = timezone.now()
        locked._change_reason = reason  # type: ignore[attr-defined]  # read by django-simple-history
        locked.save(update_fields=["revoked_at"])
    _keys.clear()


def revoke_api_keys(*, app: App, label: str | None = None) -> None:
    """Revoke the app's active keys (only those with `label`, if given)."""
    keys = app.api_keys.all()
    _revoke(keys if label is None else keys.filter(label=label))


def _revoke(keys: QuerySet[ApiKey]) -> None:
    keys.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
    _keys.clear()  # an update sends no signal


def authenticate_api_key(raw_key: str) -> ApiKey | None:
    """The active key (with its active app) that `raw_key` is, or None.

    The key's row is memoised per process (`playpay.refcache`); the secret is checked on every call.
    """
    parts = raw_key.split("_")
    if len(parts) < 3 or parts[0] != "pp":
        return None
    api_key = _keys.get(parts[1], lambda: ApiKey.objects.select_related("app").filter(prefix=parts[1]).first())
    if api_key is None or not secrets.compare_digest(api_key.key_hash, ApiKey.hash(raw_key)):
        return None
    if not api_key.is_active or not api_key.app.is_active:
        return None
    return api_key
