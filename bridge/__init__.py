"""Bridge an AIoT platform's customer domain events from MQTT to the systems that act on them."""

__version__ = "0.1.0"
