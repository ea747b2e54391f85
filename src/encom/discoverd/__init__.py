"""Service discovery: register with TTL heartbeats, list, watch, leader per service."""
