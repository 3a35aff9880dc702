"""One module per command: typed steps that return typed results (``app`` only calls them)."""
