"""Dataset readers. Text sources yield ``Conversation`` objects; length-only sources
(Azure trace, synthetic) build a ``RequestPool`` directly."""
