"""The intake: the receive-only MQTT connection (codec and socket loop) and what it hands over."""
