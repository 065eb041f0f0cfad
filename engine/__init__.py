"""Nimbus engine: one MTA node (reception -> policy -> spool -> queues -> delivery -> log)."""

__version__ = "0.1.0"
