"""The MQTT broker: amqtt underneath, our authentication, ACL, retained handling and fixes on top.

This package is the only importer of amqtt.
"""

from mqttpush.broker.broker import Authenticator, PresenceHook, PushBroker, Tap
from mqttpush.broker.limits import BrokerLimits

__all__ = ["Authenticator", "BrokerLimits", "PresenceHook", "PushBroker", "Tap"]
