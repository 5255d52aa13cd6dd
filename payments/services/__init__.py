"""Payment business rules. Every state change of a payment goes through `state_machine.transition`."""
