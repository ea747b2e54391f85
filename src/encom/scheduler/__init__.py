"""encom scheduler: keeps every formation's jobs running on the hosts.

- `reconcile`: the pure core. Desired counts + active jobs + restarts owed -> jobs to start (with dyno index and
  host) and to stop.
- `state`: the in-memory cluster view the core reads, rebuilt from the controller and the hosts (never stored).
- `specs`: host job specs (env, service, health check) and the controller's job records.
- `backoff`: restart delays per dyno (immediate x5, then 10 s x10, then 30 s; reset after 5 minutes up).
- `reporter`: ordered, coalesced, retried job-state reports to the controller.
- `hosts`: one link (client + event follower) per host registered in discoverd.
- `service`: the role: leader election, the event streams, periodic resync, applying plans.
"""
