"""Template filters shared by the admin's pages."""
