"""The CLI's client of the controller API."""

from __future__ import annotations

import json
from typing import Any

import httpx

from canarist import errors
from canarist.errors import BadInput, CanaristError, ControllerUnavailable
from canarist.home import Home

_BAD_INPUT = {
    cls.__name__: cls
    for cls in (
        errors.ConfigError,
        errors.UnknownService,
        errors.UnknownRelease,
        errors.TamperedRelease,
        errors.RolloutInProgress,
        BadInput,
    )
}


class ControllerClient:
    """Talks to the running controller of one home."""

    def __init__(self, home: Home, timeout: float = 60.0) -> None:
        try:
            endpoint = json.loads(home.endpoint.read_text())
            token = home.token.read_text().strip()
        except (OSError, ValueError) as exc:
            raise ControllerUnavailable(
                "the controller is not running (run `canarist up`)"
            ) from exc
        self._http = httpx.Client(
            base_url=f"http://127.0.0.1:{endpoint['port']}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ControllerUnavailable(
                "the controller does not answer (run `canarist up`)"
            ) from exc
        data = response.json()
        if response.status_code == 400:
            raise _BAD_INPUT.get(data.get("kind"), BadInput)(data.get("error", "bad input"))
        if response.status_code >= 400:
            raise CanaristError(data.get("error", f"controller answered {response.status_code}"))
        return data

    def status(self, service: str | None = None) -> list[dict[str, Any]]:
        """status --json of one or every service."""
        params = {"service": service} if service else {}
        result: list[dict[str, Any]] = self._call("GET", "/v1/status", params=params)
        return result

    def deploy(self, service: str, release: str, strategy: str | None) -> dict[str, Any]:
        """Start a rollout."""
        payload = {"service": service, "release": release, "strategy": strategy}
        result: dict[str, Any] = self._call("POST", "/v1/deploy", json=payload)
        return result

    def command(self, verb: str, service: str, **extra: Any) -> dict[str, Any]:
        """promote / abort / rollback."""
        result: dict[str, Any] = self._call(
            "POST", f"/v1/{verb}", json={"service": service, **extra}
        )
        return result

    def history(self, service: str, limit: int = 50) -> list[dict[str, Any]]:
        """Past rollouts, newest first."""
        result: list[dict[str, Any]] = self._call(
            "GET", f"/v1/history/{service}", params={"limit": limit}
        )
        return result

    def rollout(self, rollout_id: int) -> dict[str, Any]:
        """One rollout."""
        result: dict[str, Any] = self._call("GET", f"/v1/rollouts/{rollout_id}")
        return result

    def audit_log(self) -> dict[str, Any]:
        """Whether the audit log's hash chain is intact."""
        result: dict[str, Any] = self._call("GET", "/v1/audit-log")
        return result

    def reload(self) -> dict[str, Any]:
        """Re-read the spec."""
        result: dict[str, Any] = self._call("POST", "/v1/reload", json={})
        return result

    def shutdown(self, everything: bool = True) -> None:
        """Stop the controller (and with `everything`, HAProxy and every instance)."""
        self._call("POST", "/v1/shutdown", json={"everything": everything})
