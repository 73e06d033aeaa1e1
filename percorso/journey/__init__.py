"""Journey definitions (stages, touchpoints, personas, KPIs) and the templates they start from."""

from percorso.journey.definition import (
    Journey,
    JourneyError,
    Problem,
    json_schema,
    load_journey,
    load_journey_file,
    unknown_event_names,
)
from percorso.journey.templates import TEMPLATES, template_text

__all__ = [
    "TEMPLATES",
    "Journey",
    "JourneyError",
    "Problem",
    "json_schema",
    "load_journey",
    "load_journey_file",
    "template_text",
    "unknown_event_names",
]
