"""CloudWatch as a metrics source and its alarms as a rollback trigger, against moto.

moto answers GetMetricData with a server error for percentile statistics (p90 ...), so
the tests against it ask for Average and Maximum; the default percentile queries are
checked with botocore's Stubber, against the real API model.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

import boto3
import pytest

from canarist.errors import ConfigError
from canarist.metrics.cloudwatch import CloudWatchMetrics, dimension_suffix
from canarist.testing import FakeClock
from tests.aws.conftest import REGION

pytestmark = pytest.mark.aws

LB = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/web/50dc6c495c0c9188"
TG_OLD = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/cn-web-aaa/73e2d6bc"
TG_NEW = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/cn-web-bbb/9f8e7d6c"
STABLE = "sha256:" + "a" * 64
CANARY = "sha256:" + "b" * 64
ALB_SETTINGS = {
    "services": {"web": {"kind": "alb", "load_balancer": LB, "releases": {STABLE: TG_OLD}}},
    "latency_statistics": ["Average", "Maximum"],
}


def at(moment: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(moment, datetime.UTC)


def put_alb(aws: Any, target_group: str, moment: float, **metrics: Any) -> None:
    """Datapoints for one target group at one moment, as the load balancer would publish."""
    dimensions = [
        {"Name": "LoadBalancer", "Value": "app/web/50dc6c495c0c9188"},
        {"Name": "TargetGroup", "Value": dimension_suffix(target_group)},
    ]
    data = []
    for name, value in metrics.items():
        datum: dict[str, Any] = {
            "MetricName": name,
            "Dimensions": dimensions,
            "Timestamp": at(moment),
        }
        if isinstance(value, list):  # latencies in seconds, each counted once
            datum.update(Values=value, Counts=[1.0] * len(value), Unit="Seconds")
        else:
            datum.update(Value=value, Unit="Count")
        data.append(datum)
    aws.client("cloudwatch").put_metric_data(Namespace="AWS/ApplicationELB", MetricData=data)


@pytest.fixture
def clock() -> FakeClock:
    """Wall-clock now, on the minute (CloudWatch's period), moved only by the test."""
    now = time.time()
    return FakeClock(now - now % 60)


def count_calls(metrics: CloudWatchMetrics) -> list[str]:
    calls: list[str] = []
    metrics.client.meta.events.register(
        "before-call.cloudwatch.GetMetricData", lambda **_: calls.append("GetMetricData")
    )
    return calls


async def test_counts_per_target_group_in_one_call(aws: Any, clock: FakeClock) -> None:
    """Two target groups' datapoints become two releases' counts, through one GetMetricData."""
    put_alb(aws, TG_OLD, clock() - 600, RequestCount=999.0)  # before the window: not counted
    metrics = CloudWatchMetrics(aws, ALB_SETTINGS, clock=clock)
    metrics.bind("web", CANARY, TG_NEW)
    put_alb(aws, TG_OLD, clock() + 5, RequestCount=100.0, HTTPCode_Target_5XX_Count=1.0)
    put_alb(
        aws,
        TG_NEW,
        clock() + 5,
        RequestCount=20.0,
        HTTPCode_Target_5XX_Count=3.0,
        TargetConnectionErrorCount=2.0,
    )
    put_alb(aws, TG_NEW, clock() + 30, RequestCount=10.0)
    calls = count_calls(metrics)
    clock.advance(40)
    snapshot = await metrics.snapshot("web")
    assert calls == ["GetMetricData"]
    assert {r: (w.requests, w.failures) for r, w in snapshot.items()} == {
        STABLE: (100, 1),
        CANARY: (30, 5),
    }
    assert await metrics.snapshot("other") == {}


async def test_reset_starts_a_new_window(aws: Any, clock: FakeClock) -> None:
    """After reset only what came after counts; counts never fall within a window."""
    metrics = CloudWatchMetrics(aws, ALB_SETTINGS, clock=clock)
    put_alb(aws, TG_OLD, clock() + 5, RequestCount=100.0, HTTPCode_Target_5XX_Count=4.0)
    clock.advance(10)
    assert (await metrics.snapshot("web"))[STABLE].requests == 100
    clock.advance(60)
    await metrics.reset("web")
    assert (await metrics.snapshot("web"))[STABLE].requests == 0
    put_alb(aws, TG_OLD, clock() + 1, RequestCount=7.0)
    clock.advance(5)
    window = (await metrics.snapshot("web"))[STABLE]
    assert (window.requests, window.failures) == (7, 0)


async def test_recent_counts_span_windows_in_one_call(aws: Any, clock: FakeClock) -> None:
    """A release's last minutes, whatever the window: the reference for a canary that
    takes all traffic. Only the counts are asked for, in one GetMetricData."""
    metrics = CloudWatchMetrics(aws, ALB_SETTINGS, clock=clock)
    put_alb(aws, TG_OLD, clock() - 1200, RequestCount=500.0)  # 20 minutes ago: too old
    put_alb(aws, TG_OLD, clock() - 300, RequestCount=100.0, HTTPCode_Target_5XX_Count=1.0)
    put_alb(aws, TG_OLD, clock() + 5, RequestCount=50.0, TargetConnectionErrorCount=2.0)
    clock.advance(10)
    await metrics.reset("web")
    calls = count_calls(metrics)
    assert await metrics.recent("web", STABLE, 600) == (150, 3)
    assert calls == ["GetMetricData"]
    assert await metrics.recent("web", CANARY, 600) is None  # not bound
    assert await metrics.recent("other", STABLE, 600) is None


async def test_latency_figures_are_handed_out_once_settled(aws: Any, clock: FakeClock) -> None:
    """Each settled period gives one value per statistic, in milliseconds, once."""
    metrics = CloudWatchMetrics(aws, {**ALB_SETTINGS, "settle": 60}, clock=clock)
    put_alb(aws, TG_OLD, clock() + 5, RequestCount=4.0, TargetResponseTime=[0.010, 0.030])
    put_alb(aws, TG_OLD, clock() + 20, TargetResponseTime=[0.020, 0.100])
    clock.advance(30)
    early = (await metrics.snapshot("web"))[STABLE]
    assert early.latencies_ms == () and early.latency_count == 0  # period not settled yet
    clock.advance(120)
    settled = (await metrics.snapshot("web"))[STABLE]
    assert sorted(settled.latencies_ms) == pytest.approx([40.0, 100.0])  # average, maximum
    assert settled.latency_count == 4
    again = (await metrics.snapshot("web"))[STABLE]
    assert again.latencies_ms == () and again.requests == 4


async def test_lambda_versions_through_an_alias(aws: Any, clock: FakeClock) -> None:
    """Invocations and Errors by ExecutedVersion under the alias, one release per version."""
    settings = {
        "services": {"api": {"kind": "lambda", "function_name": "checkout", "alias": "live"}},
        "latency_statistics": ["Average"],
    }
    metrics = CloudWatchMetrics(aws, settings, clock=clock)
    metrics.bind("api", STABLE, "1")
    metrics.bind("api", CANARY, "2")
    for version, invocations, errors in (("1", 90.0, 0.0), ("2", 10.0, 4.0)):
        dimensions = [
            {"Name": "FunctionName", "Value": "checkout"},
            {"Name": "Resource", "Value": "checkout:live"},
            {"Name": "ExecutedVersion", "Value": version},
        ]
        aws.client("cloudwatch").put_metric_data(
            Namespace="AWS/Lambda",
            MetricData=[
                {"MetricName": name, "Dimensions": dimensions, "Timestamp": at(clock() + 5),
                 "Value": value, "Unit": "Count"}
                for name, value in (("Invocations", invocations), ("Errors", errors))
            ],
        )  # fmt: skip
    clock.advance(10)
    snapshot = await metrics.snapshot("api")
    assert {r: (w.requests, w.failures) for r, w in snapshot.items()} == {
        STABLE: (90, 0),
        CANARY: (10, 4),
    }
    metrics.unbind("api", CANARY)
    assert list(await metrics.snapshot("api")) == [STABLE]


def test_bad_settings_and_unknown_services_are_config_errors(aws: Any) -> None:
    """Malformed settings, and binding a service not configured, are one-line ConfigErrors."""
    with pytest.raises(ConfigError, match="period"):
        CloudWatchMetrics(aws, {**ALB_SETTINGS, "period": 45})
    with pytest.raises(ConfigError, match="latency statistic"):
        CloudWatchMetrics(aws, {**ALB_SETTINGS, "latency_statistics": ["median"]})
    with pytest.raises(ConfigError, match="not configured"):
        CloudWatchMetrics(aws, ALB_SETTINGS).bind("nope", CANARY, TG_NEW)


async def test_alarms_firing(aws: Any) -> None:
    """An alarm set to ALARM is reported, back to OK it is not; an unknown name is refused."""
    cloudwatch = aws.client("cloudwatch")
    for name in ("web-elb-5xx", "web-latency"):
        cloudwatch.put_metric_alarm(
            AlarmName=name,
            Namespace="AWS/ApplicationELB",
            MetricName="HTTPCode_ELB_5XX_Count",
            Dimensions=[{"Name": "LoadBalancer", "Value": "app/web/50dc6c495c0c9188"}],
            Statistic="Sum",
            Period=60,
            EvaluationPeriods=1,
            Threshold=1.0,
            ComparisonOperator="GreaterThanOrEqualToThreshold",
        )
    metrics = CloudWatchMetrics(aws, ALB_SETTINGS)
    names = ["web-elb-5xx", "web-latency"]
    assert await metrics.alarms_firing(names) == []
    cloudwatch.set_alarm_state(AlarmName="web-latency", StateValue="ALARM", StateReason="test")
    assert await metrics.alarms_firing(names) == ["web-latency"]
    cloudwatch.set_alarm_state(AlarmName="web-latency", StateValue="OK", StateReason="test")
    assert await metrics.alarms_firing(names) == []
    with pytest.raises(ConfigError, match="no alarm named 'web-typo'"):
        await metrics.alarms_firing([*names, "web-typo"])
    assert await metrics.alarms_firing([]) == []


async def test_default_percentile_queries_against_the_api_model() -> None:
    """By default: Sum of the counts, p50/p90/p99 and SampleCount of the latency, for each
    release, in one request that botocore's Stubber checks against the real API model."""
    from botocore.stub import ANY, Stubber

    session = boto3.session.Session(
        region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x"
    )
    clock = FakeClock(1_800_000_000.0)
    metrics = CloudWatchMetrics(
        session,
        {"services": {"web": {"kind": "alb", "load_balancer": LB, "releases": {STABLE: TG_OLD}}}},
        clock=clock,
    )
    clock.advance(600)
    period_start = at(1_800_000_000.0)
    values = {
        "r0_requests": [50.0],
        "r0_failures0": [2.0],
        "r0_failures1": [1.0],
        "r0_latency0": [0.020],
        "r0_latency1": [0.080],
        "r0_latency2": [0.300],
        "r0_count": [50.0],
    }
    sent: list[dict[str, Any]] = []
    metrics.client.meta.events.register(
        "provide-client-params.cloudwatch.GetMetricData",
        lambda params, **_: sent.append(params),
    )
    with Stubber(metrics.client) as stub:
        stub.add_response(
            "get_metric_data",
            {
                "MetricDataResults": [
                    {"Id": i, "Timestamps": [period_start], "Values": v, "StatusCode": "Complete"}
                    for i, v in values.items()
                ]
            },
            {
                "MetricDataQueries": ANY,
                "StartTime": at(1_800_000_000.0),
                "EndTime": at(1_800_000_660.0),
                "ScanBy": "TimestampAscending",
            },
        )
        window = (await metrics.snapshot("web"))[STABLE]
        stub.assert_no_pending_responses()
    assert (window.requests, window.failures, window.latency_count) == (50, 3, 50)
    assert window.latencies_ms == pytest.approx((20.0, 80.0, 300.0))
    assert len(sent) == 1
    queries = sent[0]["MetricDataQueries"]
    assert [
        (q["MetricStat"]["Metric"]["MetricName"], q["MetricStat"]["Stat"]) for q in queries
    ] == [
        ("RequestCount", "Sum"),
        ("HTTPCode_Target_5XX_Count", "Sum"),
        ("TargetConnectionErrorCount", "Sum"),
        ("TargetResponseTime", "p50"),
        ("TargetResponseTime", "p90"),
        ("TargetResponseTime", "p99"),
        ("TargetResponseTime", "SampleCount"),
    ]
    assert queries[0]["MetricStat"]["Metric"]["Dimensions"] == [
        {"Name": "LoadBalancer", "Value": "app/web/50dc6c495c0c9188"},
        {"Name": "TargetGroup", "Value": "targetgroup/cn-web-aaa/73e2d6bc"},
    ]
