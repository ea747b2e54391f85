"""The host agent: runs jobs in runc containers on this machine."""
