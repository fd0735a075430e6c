"""Other systems' storage events entering the event log: see base.py."""
