"""HTTP routes: thin handlers that parse, call the service, and map failures to status codes."""
