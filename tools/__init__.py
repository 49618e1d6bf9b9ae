"""Developer and user tools that sit beside the monitor (sample builder, cache inspector)."""
