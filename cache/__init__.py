"""The translation cache: translated blocks, their chaining and invalidation (issue 3)."""
