"""The API's tenants: an App (a game backend), its API keys, how it authenticates and its rate limit."""
