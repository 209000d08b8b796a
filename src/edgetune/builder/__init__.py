"""The dev-box side: export, graph rewrites and artifact generation (needs the `build` extra)."""
