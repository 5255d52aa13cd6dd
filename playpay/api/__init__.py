"""API plumbing shared by every app: Api-Key authentication, per-app rate limits, problem+json errors."""
