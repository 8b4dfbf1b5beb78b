"""What a backplane or an archive raises when the server cannot start with it.

A module of its own, so that ``sharing`` (which opens them) and the modules it opens
(``historyfile``, ``redisroom``) all import it from below, with no circle.
"""

from __future__ import annotations


class StartError(Exception):
    """Something the server needs cannot be had at start; its text is the one line to show."""
