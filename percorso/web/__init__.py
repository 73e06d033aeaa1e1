"""The HTTP application: collector, REST API (and, later, the dashboard)."""
