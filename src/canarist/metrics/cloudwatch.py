"""Per-release request outcomes from CloudWatch, and CloudWatch alarms as a rollback trigger.

What is measured, per release, in one GetMetricData call per snapshot:

- **Behind an ALB** (`kind: alb`), a release is its target group, with the dimensions
  `LoadBalancer` and `TargetGroup`, namespace `AWS/ApplicationELB`:
  `requests` is the sum of `RequestCount`; `failures` the sum of
  `HTTPCode_Target_5XX_Count` (the app's 5xx) and `TargetConnectionErrorCount`
  (connections the load balancer could not open to the release's instances), at most
  `requests`. The load balancer's own 5xx (`HTTPCode_ELB_5XX_Count`, its 502/503/504) are
  published per load balancer only, never per target group, so they cannot be credited to
  a release: put an alarm on them instead (see `alarms_firing`).
- **On Lambda** (`kind: lambda`), a release is a version of the function, namespace
  `AWS/Lambda`: `requests` is the sum of `Invocations`, `failures` of `Errors`. A version
  invoked through a weighted alias is measured with the dimensions `FunctionName`,
  `Resource` = `function:alias` and `ExecutedVersion` = the version (set `alias`); a
  version invoked by its own qualified name with `FunctionName` and `Resource` =
  `function:version`.

Counts are summed from the start of the window (the provider's start, then each `reset`)
rounded down to the period (60 s by default), CloudWatch's own granularity: a window may
count up to one period of traffic from before it began. CloudWatch ingests metrics a
minute or more late; counts are as late, and `at` is when they were read.

**Latency is not sampled.** CloudWatch keeps statistics, not the individual requests: the
"latencies" handed to a judge are, for each period of the window that has settled (ended
at least `settle` seconds ago, so late data are in) and was not handed out before, one
value per statistic in `latency_statistics` of `TargetResponseTime` (converted to
milliseconds) or `Duration`: by default the period's p50, p90 and p99. `latency_count` is
how many requests those periods' statistics summarize (their `SampleCount`). A rank test
on a handful of percentiles is weaker evidence than one on request latencies, and says
nothing until a period settles; counts are the stronger signal from this provider.

Which target group or version is which release comes from the settings (`releases`) or
from `bind`, as a platform prepares a release.
"""

from __future__ import annotations

import asyncio
import datetime
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from canarist.aws.clients import aws_call
from canarist.domain.validation import parse_settings
from canarist.errors import ConfigError
from canarist.metrics.base import ReleaseWindow

if TYPE_CHECKING:
    from boto3.session import Session
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_cloudwatch.type_defs import DimensionTypeDef, MetricDataQueryTypeDef

_STATISTIC = re.compile(r"^(Average|Minimum|Maximum|p\d{1,2}(\.\d{1,2})?)$")
_ALARM_BATCH = 100  # DescribeAlarms takes at most 100 names


class AlbService(BaseModel):
    """A service behind an Application Load Balancer: one target group per release."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["alb"]
    load_balancer: str = Field(min_length=1)  # its ARN, or its "app/<name>/<id>"
    releases: dict[str, str] = Field(default_factory=dict)  # release -> target group ARN


class LambdaService(BaseModel):
    """A service on Lambda: one function version per release."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["lambda"]
    function_name: str = Field(min_length=1)
    alias: str | None = None  # the alias its traffic goes through, when weighted
    releases: dict[str, str] = Field(default_factory=dict)  # release -> version number


ServiceSource = Annotated[AlbService | LambdaService, Field(discriminator="kind")]


class CloudWatchSettings(BaseModel):
    """What the CloudWatch provider measures, and at which granularity."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    services: dict[str, ServiceSource] = Field(default_factory=dict)
    period: int = 60  # seconds; 60 and its multiples, or 1, 5, 10, 30 for high resolution
    latency_statistics: tuple[str, ...] = ("p50", "p90", "p99")
    settle: float = Field(default=120.0, ge=0)  # seconds before a period's figures are final

    @field_validator("period")
    @classmethod
    def _period(cls, value: int) -> int:
        if value not in (1, 5, 10, 30) and (value < 60 or value % 60):
            raise ValueError("period must be 1, 5, 10, 30 or a multiple of 60 seconds")
        return value

    @field_validator("latency_statistics")
    @classmethod
    def _statistics(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for statistic in value:
            if not _STATISTIC.match(statistic):
                raise ValueError(
                    f"{statistic!r} is not a latency statistic (Average, Minimum, Maximum, pNN)"
                )
        return value

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> CloudWatchSettings:
        """Settings from a mapping (a canarist.yaml section); ConfigError on any problem."""
        return parse_settings(cls, dict(data), "cloudwatch")


@dataclass(frozen=True)
class _Measures:
    """The metrics read for one kind of service."""

    namespace: str
    requests: str
    failures: tuple[str, ...]
    latency: str
    latency_to_ms: float


_ALB = _Measures(
    namespace="AWS/ApplicationELB",
    requests="RequestCount",
    failures=("HTTPCode_Target_5XX_Count", "TargetConnectionErrorCount"),
    latency="TargetResponseTime",
    latency_to_ms=1000.0,  # seconds
)
_LAMBDA = _Measures(
    namespace="AWS/Lambda",
    requests="Invocations",
    failures=("Errors",),
    latency="Duration",
    latency_to_ms=1.0,
)


@dataclass
class _Window:
    start: float  # wall clock
    latency_from: float  # wall clock: periods starting before this were handed out
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # release -> last seen


def dimension_suffix(value: str) -> str:
    """CloudWatch's dimension value for a load balancer or target group, from its ARN:
    "app/<name>/<id>" or "targetgroup/<name>/<id>". Anything else is taken as it is."""
    if not value.startswith("arn:") or value.count(":") < 5:
        return value
    return value.split(":", 5)[5].removeprefix("loadbalancer/")


class CloudWatchMetrics:
    """The `Metrics` protocol over CloudWatch, plus `alarms_firing` (see the module's docstring)."""

    def __init__(
        self,
        session: Session,
        settings: CloudWatchSettings | Mapping[str, Any],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(settings, CloudWatchSettings):
            settings = CloudWatchSettings.parse(settings)
        self.settings = settings
        self.client: CloudWatchClient = session.client("cloudwatch")
        self._clock = clock
        self._started = clock()
        self._bound: dict[str, dict[str, str]] = {
            name: dict(source.releases) for name, source in settings.services.items()
        }
        self._windows: dict[str, _Window] = {}

    def bind(self, service: str, release: str, dimension_value: str) -> None:
        """Measure `release` of `service` by this target group (ARN) or Lambda version."""
        self._source(service)
        self._bound[service][release] = dimension_value

    def unbind(self, service: str, release: str) -> None:
        """Stop measuring a release (it is gone); nothing bound is not an error."""
        self._bound.get(service, {}).pop(release, None)

    # -- Metrics ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Nothing runs in the background: each snapshot reads CloudWatch."""

    async def stop(self) -> None:
        """Nothing to release."""

    async def reset(self, service: str) -> None:
        """A new window for the service's releases, from now (rounded down to the period)."""
        now = self._clock()
        self._windows[service] = _Window(start=now, latency_from=self._floor(now))

    async def snapshot(self, service: str) -> dict[str, ReleaseWindow]:
        """Each bound release's counts in the window and its newly settled latency figures."""
        source = self.settings.services.get(service)
        releases = sorted(self._bound.get(service, {}).items())
        if source is None or not releases:
            return {}
        measures = _ALB if isinstance(source, AlbService) else _LAMBDA
        window = self._windows.get(service)
        if window is None:
            window = _Window(start=self._started, latency_from=self._floor(self._started))
            self._windows[service] = window
        now = self._clock()
        start = self._floor(window.start)
        end = self._floor(now) + self.settings.period
        queries = self._queries(source, measures, releases)
        results = await asyncio.to_thread(self._get_metric_data, queries, start, end)
        read_at = time.monotonic()
        settled_before = now - self.settings.settle
        newest_settled = window.latency_from
        windows: dict[str, ReleaseWindow] = {}
        for index, (release, _value) in enumerate(releases):
            requests = _total(results.get(f"r{index}_requests", ()))
            failures = sum(
                _total(results.get(f"r{index}_failures{j}", ()))
                for j in range(len(measures.failures))
            )
            # CloudWatch sums only grow over a growing window, but figures revised late
            # must not make a count fall between snapshots.
            last_requests, last_failures = window.counts.get(release, (0, 0))
            requests = max(requests, last_requests)
            failures = max(min(failures, requests), last_failures)
            window.counts[release] = (requests, failures)
            fresh = {
                ts
                for ts, _ in results.get(f"r{index}_count", ())
                if ts >= window.latency_from and ts + self.settings.period <= settled_before
            }
            latencies = tuple(
                value * measures.latency_to_ms
                for k in range(len(self.settings.latency_statistics))
                for ts, value in results.get(f"r{index}_latency{k}", ())
                if ts in fresh
            )
            latency_count = int(
                sum(value for ts, value in results.get(f"r{index}_count", ()) if ts in fresh)
            )
            if fresh:
                newest_settled = max(newest_settled, max(fresh) + self.settings.period)
            windows[release] = ReleaseWindow(
                requests=requests,
                failures=failures,
                latencies_ms=latencies,
                latency_count=latency_count,
                at=read_at,
            )
        window.latency_from = newest_settled
        return windows

    async def recent(self, service: str, release: str, seconds: float) -> tuple[int, int] | None:
        """A bound release's requests and failures over the last `seconds` (whole periods,
        the current one included), whatever the windows; None when it is not bound."""
        source = self.settings.services.get(service)
        value = self._bound.get(service, {}).get(release)
        if source is None or value is None:
            return None
        measures = _ALB if isinstance(source, AlbService) else _LAMBDA
        counted = ("r0_requests", *(f"r0_failures{j}" for j in range(len(measures.failures))))
        queries = [
            q for q in self._queries(source, measures, [(release, value)]) if q["Id"] in counted
        ]
        now = self._clock()
        start, end = self._floor(now - seconds), self._floor(now) + self.settings.period
        results = await asyncio.to_thread(self._get_metric_data, queries, start, end)
        requests = _total(results.get("r0_requests", ()))
        failures = sum(_total(results.get(name, ())) for name in counted[1:])
        return requests, min(failures, requests)

    async def recent_latencies(
        self, service: str, release: str, seconds: float
    ) -> tuple[float, ...]:
        """Nothing: CloudWatch keeps statistics, not the latencies of requests."""
        return ()

    # -- alarms ----------------------------------------------------------------------------

    async def alarms_firing(self, names: Sequence[str]) -> list[str]:
        """The named alarms (metric or composite) now in ALARM, in the order given.

        An alarm that does not exist could never fire, so a name that matches none is a
        ConfigError rather than a trigger silently disarmed.
        """
        if not names:
            return []
        states = await asyncio.to_thread(self._alarm_states, list(dict.fromkeys(names)))
        missing = [n for n in names if n not in states]
        if missing:
            raise ConfigError(
                f"cloudwatch: no alarm named {missing[0]!r}"
                + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else "")
                + ": a rollback trigger that cannot fire"
            )
        return [n for n in names if states[n] == "ALARM"]

    # -- internals -------------------------------------------------------------------------

    def _source(self, service: str) -> AlbService | LambdaService:
        source = self.settings.services.get(service)
        if source is None:
            known = ", ".join(sorted(self.settings.services)) or "none"
            raise ConfigError(f"cloudwatch: service {service!r} is not configured (known: {known})")
        return source

    def _floor(self, moment: float) -> float:
        period = self.settings.period
        return moment - moment % period

    def _dimensions(self, source: AlbService | LambdaService, value: str) -> list[DimensionTypeDef]:
        if isinstance(source, AlbService):
            return [
                {"Name": "LoadBalancer", "Value": dimension_suffix(source.load_balancer)},
                {"Name": "TargetGroup", "Value": dimension_suffix(value)},
            ]
        function = source.function_name
        if source.alias is not None:
            return [
                {"Name": "FunctionName", "Value": function},
                {"Name": "Resource", "Value": f"{function}:{source.alias}"},
                {"Name": "ExecutedVersion", "Value": value},
            ]
        return [
            {"Name": "FunctionName", "Value": function},
            {"Name": "Resource", "Value": f"{function}:{value}"},
        ]

    def _queries(
        self,
        source: AlbService | LambdaService,
        measures: _Measures,
        releases: Sequence[tuple[str, str]],
    ) -> list[MetricDataQueryTypeDef]:
        period = self.settings.period
        queries: list[MetricDataQueryTypeDef] = []

        def query(query_id: str, metric: str, stat: str, value: str) -> None:
            queries.append(
                {
                    "Id": query_id,
                    "MetricStat": {
                        "Metric": {
                            "Namespace": measures.namespace,
                            "MetricName": metric,
                            "Dimensions": self._dimensions(source, value),
                        },
                        "Period": period,
                        "Stat": stat,
                    },
                    "ReturnData": True,
                }
            )

        for index, (_release, value) in enumerate(releases):
            query(f"r{index}_requests", measures.requests, "Sum", value)
            for j, metric in enumerate(measures.failures):
                query(f"r{index}_failures{j}", metric, "Sum", value)
            for k, statistic in enumerate(self.settings.latency_statistics):
                query(f"r{index}_latency{k}", measures.latency, statistic, value)
            query(f"r{index}_count", measures.latency, "SampleCount", value)
        return queries

    def _get_metric_data(
        self, queries: list[MetricDataQueryTypeDef], start: float, end: float
    ) -> dict[str, list[tuple[float, float]]]:
        """(period start, value) pairs per query id, across every page of one request."""
        results: dict[str, list[tuple[float, float]]] = {}
        arguments: dict[str, Any] = {
            "MetricDataQueries": queries,
            "StartTime": datetime.datetime.fromtimestamp(start, datetime.UTC),
            "EndTime": datetime.datetime.fromtimestamp(end, datetime.UTC),
            "ScanBy": "TimestampAscending",
        }
        while True:
            with aws_call("read CloudWatch metrics"):
                page = self.client.get_metric_data(**arguments)
            for result in page.get("MetricDataResults", []):
                pairs = zip(result.get("Timestamps", []), result.get("Values", []), strict=False)
                results.setdefault(result["Id"], []).extend(
                    (ts.timestamp(), float(v)) for ts, v in pairs
                )
            token = page.get("NextToken")
            if not token:
                return results
            arguments["NextToken"] = token

    def _alarm_states(self, names: list[str]) -> dict[str, str]:
        states: dict[str, str] = {}
        for i in range(0, len(names), _ALARM_BATCH):
            with aws_call("read CloudWatch alarms"):
                found = self.client.describe_alarms(
                    AlarmNames=names[i : i + _ALARM_BATCH],
                    AlarmTypes=["MetricAlarm", "CompositeAlarm"],
                )
            for alarm in [*found.get("MetricAlarms", []), *found.get("CompositeAlarms", [])]:
                states[alarm["AlarmName"]] = alarm["StateValue"]
        return states


def _total(pairs: Sequence[tuple[float, float]]) -> int:
    return round(sum(value for _, value in pairs))
