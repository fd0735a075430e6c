"""Storage events: the canonical model written to the outbox, and how it is read and rendered."""
