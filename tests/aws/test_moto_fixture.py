"""The moto fixture itself."""

from __future__ import annotations

from typing import Any

import pytest

from tests.aws.conftest import REGION

pytestmark = pytest.mark.aws


def test_moto_server_answers_over_http(aws: Any, moto_endpoint: str) -> None:
    """The fixture's boto3 clients really talk HTTP to the moto server."""
    s3 = aws.client("s3")
    assert s3.meta.endpoint_url == moto_endpoint
    s3.create_bucket(Bucket="probe", CreateBucketConfiguration={"LocationConstraint": REGION})
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["probe"]
