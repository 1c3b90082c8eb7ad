"""Middleware layers, tower-style: each wraps a `Service` in another (see `apalis_cli.service`)."""

from __future__ import annotations

from .catch import CatchLayer
from .limits import ConcurrencyLayer, RateLimitLayer
from .retry import Backoff, RetryLayer
from .timeout import TaskTimeout, TimeoutLayer
from .tracing import TracingLayer

__all__ = [
    "Backoff",
    "CatchLayer",
    "ConcurrencyLayer",
    "RateLimitLayer",
    "RetryLayer",
    "TaskTimeout",
    "TimeoutLayer",
    "TracingLayer",
]
