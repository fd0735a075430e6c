"""headrace's processes, each a role: `headrace up` runs them all in one process; a cluster runs them
separately (`headrace door`, `frontend`, `controller`, `invoker`, and `headrace pool` for pools).

What each role holds of its own, per process (everything else is in the shared database and the pools):

- **door** (WebDAV): WebDAV locks, in memory. A lock taken through one door is not seen by another, so
  several doors behind one name must send a client's locking session to one door (or clients must not rely
  on locks). Uploads in progress: a door killed mid-upload leaves an invisible partial file in its pool's
  tmp/ (with `headrace pool` pools, the pool's own sweep removes it).
- **frontend** (namespace, events SSE, functions API, /metrics): SSE channels, in memory and in a channel
  directory of its own. A channel lives on the frontend that made it (its URL names that frontend), so a
  client must reach it there: route /api/v1/events/channels/{id} to one frontend, or give each frontend a
  name of its own. The per-minute invoke and fire limits and the in-flight counts are per frontend (the
  namespace's effective limit is that many times the setting). A blocking invoke is answered by the
  frontend it was sent to, from the results topic.
- **controller**: one per cluster (two would both do the feed's work; the (event, rule) key still keeps
  each activation single). The feed position (in the database), the Kafka event relay and its position,
  retention.
- **invoker**: the activations it holds (their offsets stay uncommitted until they have finished, so
  another invoker takes them over if it dies) and its warm workers.

How a standalone frontend reaches the controller: through the database and Kafka, not HTTP. It writes an
invoke's (a fire's, a redrive's) activation rows as the controller would and publishes them to the
activation topic itself (functions/gateway.py); entities it changes are in the database, and the controller
re-reads them before it matches each batch of events. Without `--kafka` a standalone frontend answers
invokes, fires and redrives with 503: nothing it can reach would run them.

Start one process first on a new database (it creates the schema, the root directory and the admin user),
then the others; after that, any order.
"""
