"""What every browser test shares: the system Chromium, the live server, a signed-in staff user, artifacts."""

import os
import re
import shutil
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import BrowserContext, Page, expect

from tests.conftest import ARTIFACTS, MSISDN, Shop

# Debian's chromium package; CHROMIUM points elsewhere. Playwright never downloads a browser of its own.
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# A shared, busy machine can take a few seconds for a page; expectations wait, they never sleep.
expect.set_options(timeout=10_000)
STAFF_PASSWORD = "e2e-Staff-pass-91!"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    # A missing browser fails the browser tests here, with the way to get one; they never skip.
    assert os.access(CHROMIUM, os.X_OK), f"no Chromium at {CHROMIUM}: run scripts/browser.sh (or set CHROMIUM)"
    return {**browser_type_launch_args, "executable_path": CHROMIUM}


@pytest.fixture(scope="session", autouse=True)
def _orm_beside_playwright() -> Iterator[None]:
    """Playwright's sync API keeps an event loop in the test's thread; the ORM calls in the test are still
    plain synchronous code, which Django's guard cannot tell."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        yield


@pytest.fixture(autouse=True)
def _plain_http_cookies(settings: Any) -> None:
    """The live server speaks plain HTTP: cookies marked Secure would not come back to it."""
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False


@pytest.fixture(scope="session")
def base_url(live_server: Any) -> str:
    """Pages open relative to the live server: page.goto("/admin/")."""
    return str(live_server.url)


@pytest.fixture
def context(context: BrowserContext) -> BrowserContext:
    context.set_default_timeout(15_000)
    return context


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report


_CALL_FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def _artifacts_on_failure(request: pytest.FixtureRequest, context: BrowserContext) -> Iterator[None]:
    """A failed test leaves a full-page screenshot and the HTML of each page it had open in test-artifacts/."""
    yield
    if not request.node.stash.get(_CALL_FAILED, False):
        return
    folder = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.nodeid).strip("-")
    folder.mkdir(parents=True, exist_ok=True)
    for number, page in enumerate(context.pages, start=1):
        try:
            page.screenshot(path=folder / f"page-{number}.png", full_page=True)
            (folder / f"page-{number}.html").write_text(f"<!-- {page.url} -->\n{page.content()}", encoding="utf-8")
        except Exception as error:  # a page that crashed still leaves a note of why there is no picture
            (folder / f"page-{number}.error.txt").write_text(f"{page.url}\n{error!r}\n", encoding="utf-8")


@pytest.fixture
def staff_user(transactional_db: Any) -> Any:
    return get_user_model().objects.create_superuser("ops-e2e", "ops-e2e@example.com", STAFF_PASSWORD)


@pytest.fixture
def sign_in(live_server: Any) -> Callable[[Page, Any], Page]:
    """Signs a staff user in through the admin's own login form, as a person would."""

    def sign_in(page: Page, user: Any, password: str = STAFF_PASSWORD) -> Page:
        page.goto(f"{live_server.url}/admin/login/?next=/admin/")
        page.get_by_label("Username").fill(user.get_username())
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Log in").click()
        expect(page.locator("#nav-sidebar")).to_contain_text(user.get_username())  # the signed-in person's menu
        return page

    return sign_in


@pytest.fixture
def admin_page(page: Page, staff_user: Any, sign_in: Callable[[Page, Any], Page]) -> Page:
    """A browser page with a superuser signed in to the admin."""
    return sign_in(page, staff_user)


@dataclass
class Game:
    """A game backend calling the live server's API over HTTP with its key."""

    shop: Shop
    base_url: str

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Api-Key {self.shop.key}", **kwargs.pop("headers", {})}
        return httpx.request(method, f"{self.base_url}{path}", headers=headers, timeout=30, **kwargs)

    def pay(self, key: str, *, msisdn: str = MSISDN, user_ref: str = "player-1") -> dict[str, Any]:
        """A one-click payment, as the API returns it once the carrier has answered."""
        body = {
            "user_ref": user_ref,
            "msisdn": msisdn,
            "price_point": self.shop.price_point.code,
            "flow": "one_click",
        }
        response = self.request("POST", "/api/v1/payments/", json=body, headers={"Idempotency-Key": key})
        assert response.status_code == 201, response.text
        payment: dict[str, Any] = response.json()
        return payment


@pytest.fixture
def game(transactional_db: Any, live_server: Any, make_shop: Callable[..., Shop]) -> Game:
    return Game(shop=make_shop(), base_url=live_server.url)
