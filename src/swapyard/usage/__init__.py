"""Per-request figures, the usage store and the metrics built on them."""
