"""mqttpush: self-hosted push notifications over MQTT."""

__version__ = "0.1.0"
