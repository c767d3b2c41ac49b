"""Queues and the batch policy: pure Python, no I/O, injectable clock."""
