"""Losses shared by several papers (each registered by name)."""
