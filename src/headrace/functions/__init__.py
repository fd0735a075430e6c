"""Functions: OpenWhisk-style actions, triggers, rules and activations that run Python on storage events."""
