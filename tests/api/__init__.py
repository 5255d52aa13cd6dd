"""The API against its OpenAPI schema."""
