"""The binary translator: decodes guest basic blocks and rewrites sensitive instructions (issue 3)."""
