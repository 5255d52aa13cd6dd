"""The analytics tier: funnel events, journeys and payment facts shipped in batches to ClickHouse, and
funnel reports computed there by windowFunnel, for when PostgreSQL is outgrown (ANALYTICS_BACKEND)."""
