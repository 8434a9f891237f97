"""Durable queues behind one small contract (`Broker`), with one module per backend."""

from sluice.broker.contract import (
    Broker,
    Message,
    OutgoingMessage,
    QueueConfig,
    QueueStats,
    SendResult,
)

__all__ = ["Broker", "Message", "OutgoingMessage", "QueueConfig", "QueueStats", "SendResult"]
