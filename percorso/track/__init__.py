"""The browser side: percorso.js, served by the collector at /percorso.js (see docs/tracker.md)."""
