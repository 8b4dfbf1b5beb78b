"""The chat itself: members, rules, the one ordered log and history (room), the
rate limit, and where the room may also live: a history file, a Redis
backplane (sharing, historyfile, redisroom). Imports only common.protocol.
"""
