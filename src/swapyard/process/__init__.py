"""One engine child process: its state table (pure), its owning actor, its log ring."""
