"""The subscriptions' REST API for game backends."""
