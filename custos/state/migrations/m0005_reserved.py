"""A placeholder for migration 0005, which another branch adds (audit guards and retention).

It exists only so that migration numbering stays contiguous on this branch; when the branches
meet, the real 0005 replaces it (delete this file then). It changes nothing.
"""

SQLITE = """
SELECT 1;
"""

POSTGRESQL = """
SELECT 1;
"""
