"""Shards: WebDataset writing and reading, reference-target pairs, and conditioning rendering."""
