"""The controller: encom's REST API and the record of apps, releases, formations, jobs, routes and keys."""
