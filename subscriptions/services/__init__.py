"""The business rules of subscriptions: opting in, the state machine, renewals, cancellation, entitlement."""
