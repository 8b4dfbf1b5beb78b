"""What a person sees and types: commands, rendering, the terminal client's
screen. Imports only common.protocol.
"""
