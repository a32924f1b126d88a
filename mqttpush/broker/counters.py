"""The broker's counters: plain ints in dicts, bumped on the message path and read by
``GET /metrics`` at scrape time (docs/operations.md, "Metrics"). No metrics library here."""

from __future__ import annotations

from mqttpush.topics import TOPIC_CLASSES

TRANSPORTS = {"default": "tcp", "mqtts": "tls", "ws": "ws", "wss": "wss"}
"""Listener name -> the transport label the metrics use."""


class BrokerCounters:
    """``sockets``: open connections per listener (CONNECT read or not); ``connected``: those past
    CONNACK (both keyed by listener name, ``transports`` maps it to a transport); ``connects``: CONNACKs given, ever; ``refused``: connections refused, by reason;
    ``messages_in``: client PUBLISHes the ACL let through, by topic class; ``messages_out``:
    PUBLISHes handed to subscribers' sessions (sent, or queued while offline), by topic class."""

    __slots__ = ("connected", "connects", "messages_in", "messages_out", "refused", "sockets", "transports")

    def __init__(self) -> None:
        self.transports = TRANSPORTS
        self.sockets = dict.fromkeys(TRANSPORTS, 0)
        self.connected = dict.fromkeys(TRANSPORTS, 0)
        self.connects = dict.fromkeys(TRANSPORTS, 0)
        self.refused: dict[str, int] = {}
        self.messages_in = dict.fromkeys(TOPIC_CLASSES, 0)
        self.messages_out = dict.fromkeys(TOPIC_CLASSES, 0)

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
