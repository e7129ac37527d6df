"""What the routers that split by release (the AWS ones) keep per service."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Generic, TypeVar

from canarist.errors import ConfigError, RouterError
from canarist.routers.base import ServiceRoute

Settings = TypeVar("Settings")


class ServiceBook(Generic[Settings]):
    """Each service's settings, the routes `ensure` accepted, and one lock per service."""

    def __init__(self, settings: Mapping[str, Settings], kind: str) -> None:
        self._settings = settings
        self._kind = kind  # "Route 53", "ALB", ... for messages
        self._routes: dict[str, ServiceRoute] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def conf(self, service: str) -> Settings:
        """The service's settings; ConfigError naming the configured ones when it has none."""
        conf = self._settings.get(service)
        if conf is None:
            known = ", ".join(sorted(self._settings)) or "none"
            raise ConfigError(
                f"service {service!r} has no {self._kind} settings (configured: {known})"
            )
        return conf

    def add(self, route: ServiceRoute) -> None:
        """Record a route `ensure` checked."""
        self._routes[route.name] = route

    def routed(self, service: str) -> tuple[Settings, ServiceRoute]:
        """Settings and route of a service `ensure` accepted; RouterError before that."""
        conf = self.conf(service)
        route = self._routes.get(service)
        if route is None:
            raise RouterError(f"service {service!r} is not routed; call ensure first")
        return conf, route

    def lock(self, service: str) -> asyncio.Lock:
        """The service's lock: one change at a time per service."""
        return self._locks.setdefault(service, asyncio.Lock())
