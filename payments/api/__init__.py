"""The payments REST API used by game backends."""
