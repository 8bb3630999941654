"""Reserved: version 9 is another change's (this placeholder keeps the versions contiguous
until it lands, and goes when it does). It changes nothing."""

SQLITE = """
SELECT 1;
"""

POSTGRESQL = """
SELECT 1;
"""
