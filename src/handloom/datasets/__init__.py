"""Dataset adapters into the unified schema, and the embedded synthetic default."""
