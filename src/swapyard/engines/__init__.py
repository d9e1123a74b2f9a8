"""Per-engine knowledge: launchers and (later) launch args, readiness and quirks."""
