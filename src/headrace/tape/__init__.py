"""Tape: the HSM script interface (`hsm`), a script-backed tape simulator (`simulator`), and the pool's tape
agent (`agent`) that flushes, evicts and stages; the namespace's side of it is `catalog`."""
