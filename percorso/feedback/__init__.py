"""Surveys: definitions, targeting and answers. NPS/CSAT/CES analytics live in analytics/feedback.py."""
