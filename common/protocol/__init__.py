"""The wire: frames as typed messages (codec) and UDP's sequence numbers, acks
and retransmission (reliable). Imports nothing of the project.
"""
