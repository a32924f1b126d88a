"""The MQTT broker: amqtt underneath, our authentication, ACL, retained handling and fixes on top.

This package is the only importer of amqtt.
"""

from mqttpush.broker.broker import Authenticator, PresenceHook, PushBroker, Tap

__all__ = ["Authenticator", "PresenceHook", "PushBroker", "Tap"]
