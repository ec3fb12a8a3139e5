"""Datasets: scanning, validation, duplicates, splits, the decode cache and the built-in sample."""
