"""Browser tests: Playwright drives Debian's Chromium against Django's live server on PostgreSQL."""
