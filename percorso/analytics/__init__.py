"""Journey analytics, compiled to SQL and run inside the store engine.

Identities are resolved at query time (events join the identity graph), so a visitor who
identifies mid-journey is one contact from their first anonymous event on.
"""
