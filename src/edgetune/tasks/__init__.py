"""Generated tasks whose answers can be checked exactly (stdlib only)."""
