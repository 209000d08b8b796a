"""Pieces both sides share: stdlib and numpy only."""
