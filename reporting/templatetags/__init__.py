"""Template tags of reporting: the dashboards a user may open, for the admin index."""
