"""The interaction journal: an append-only store of every API call, carrier call, callback and admin action."""
