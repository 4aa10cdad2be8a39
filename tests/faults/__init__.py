"""Jepsen-style fault injection: real processes, a real server, random faults, and checks
against an independent fold of the message store."""
