"""Decisions without I/O: which piece to fetch next, and from whom.

Pure state machines over plain data, unit-tested without processes or sockets.
"""
