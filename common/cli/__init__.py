"""Command-line plumbing: the flags both servers take, their logging and signals, and the
flag types and default port the clients share. Imports common.room only (the flags of sharing
a room, and ``StartError``).
"""
