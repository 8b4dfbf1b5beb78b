"""Command-line plumbing of the servers: their flags, logs and signals. Imports
common.protocol and common.room.
"""
