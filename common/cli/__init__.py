"""Command-line plumbing of the servers: their flags, logs, signals and the
cluster launcher. Imports common.protocol and common.room.room.
"""
