"""Behaviour-triggered automations: definitions, engine, outbox and delivery."""
