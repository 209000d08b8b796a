"""Graph rewrites, one per module: each takes a graph (and sites) and edits it in place."""
