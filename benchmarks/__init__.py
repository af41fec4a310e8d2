"""Re-creations of the original repositories' execution pattern, measured by tools/benchmark.py (not product code)."""
