"""The server core both transports share: the room and the chat's rules around it, admission,
logging, shutdown and the shape of ``main``. Transports (``tcp``, ``udp``) only move bytes.
"""
