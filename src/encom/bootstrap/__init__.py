"""Bringing a cluster up: keys, certificates, `encomd`, and the `encom cluster add` line."""
