"""headrace: a storage service whose every change is an event, and functions that run on those events."""

__version__ = "0.1.0"
