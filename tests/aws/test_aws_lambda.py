"""The Lambda platform against moto: one published version per release, found again.

Functions are created and updated, never invoked (moto would need Docker to run them).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import boto3
import pytest

from canarist.errors import ConfigError
from canarist.platforms.aws_lambda import LambdaPlatform
from tests.aws.conftest import REGION, create_lambda, package

pytestmark = pytest.mark.aws

FUNCTION = "checkout"
V1 = "sha256:" + "1" * 64
V2 = "sha256:" + "2" * 64


def code_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


@pytest.fixture
def function(aws: Any) -> str:
    """A function with a role Lambda can assume (moto checks that the role exists)."""
    create_lambda(aws, FUNCTION, package("initial"))
    return FUNCTION


def versions(aws: Any) -> list[tuple[str, str]]:
    """(version, description) of every published version, read back through boto3."""
    listed = aws.client("lambda").list_versions_by_function(FunctionName=FUNCTION)["Versions"]
    return [(v["Version"], v["Description"]) for v in listed if v["Version"] != "$LATEST"]


async def test_two_releases_publish_two_versions(aws: Any, function: str) -> None:
    """Each release gets its own version, described by its reference, with its own code."""
    platform = LambdaPlatform(aws, function, poll=0.01)
    first = await platform.prepare(V1, package("one"))
    second = await platform.prepare(V2, package("two"))
    assert (first, second) == ("1", "2")
    assert versions(aws) == [("1", f"canarist {V1}"), ("2", f"canarist {V2}")]
    published = aws.client("lambda").get_function(FunctionName=FUNCTION, Qualifier="2")
    assert published["Configuration"]["CodeSha256"] == code_sha256(package("two"))


async def test_prepare_twice_is_the_same_version(aws: Any, function: str) -> None:
    """A release already published is found by its description: nothing new is published."""
    platform = LambdaPlatform(aws, function, poll=0.01)
    assert await platform.prepare(V1, package("one")) == "1"
    assert await platform.prepare(V1, package("one")) == "1"
    assert await LambdaPlatform(aws, function).prepare(V1, package("one")) == "1"
    assert await platform.version_of(V1) == "1"
    assert await platform.version_of(V2) is None
    assert versions(aws) == [("1", f"canarist {V1}")]


async def test_identical_packages_still_get_a_version_each(aws: Any, function: str) -> None:
    """Two releases, one zip: still a version per release, each described by its release."""
    platform = LambdaPlatform(aws, function, poll=0.01)
    assert await platform.prepare(V1, package("same")) == "1"
    assert await platform.prepare(V2, package("same")) == "2"
    assert versions(aws) == [("1", f"canarist {V1}"), ("2", f"canarist {V2}")]


async def test_the_package_comes_from_s3_by_digest(aws: Any, function: str) -> None:
    """Without bytes handed over, the code is <prefix>/<hex>/lambda.zip in the bucket."""
    aws.client("s3").create_bucket(
        Bucket="canarist-artifacts", CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    data = package("from s3")
    aws.client("s3").put_object(
        Bucket="canarist-artifacts", Key=f"releases/{'1' * 64}/lambda.zip", Body=data
    )
    platform = LambdaPlatform(aws, function, bucket="canarist-artifacts", poll=0.01)
    version = await platform.prepare(V1)
    published = aws.client("lambda").get_function(FunctionName=FUNCTION, Qualifier=version)
    assert published["Configuration"]["CodeSha256"] == code_sha256(data)
    assert published["Configuration"]["Description"] == f"canarist {V1}"


async def test_no_package_anywhere_is_a_config_error(aws: Any, function: str) -> None:
    """Neither a bucket nor bytes: ConfigError, and nothing published."""
    with pytest.raises(ConfigError, match="no package"):
        await LambdaPlatform(aws, function).prepare(V1)
    assert versions(aws) == []


async def test_a_version_lambda_hands_back_is_not_taken_for_the_release() -> None:
    """Lambda answers a publish of unchanged code with the old version: canarist then
    changes the function's description and publishes again.

    moto marks every code update as a change, so it never answers that way: this path runs
    against botocore's Stubber, which checks each call against the real API model.
    """
    from botocore.stub import Stubber

    session = boto3.session.Session(
        region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x"
    )
    platform = LambdaPlatform(session, FUNCTION, poll=0.0)
    data = package("same")
    sha = code_sha256(data)
    ready = {"FunctionName": FUNCTION, "LastUpdateStatus": "Successful"}
    with Stubber(platform.client) as stub:
        stub.add_response(
            "list_versions_by_function",
            {
                "Versions": [
                    {"Version": "$LATEST"},
                    {"Version": "1", "Description": f"canarist {V1}"},
                ]
            },
            {"FunctionName": FUNCTION},
        )
        stub.add_response("get_function_configuration", ready, {"FunctionName": FUNCTION})
        stub.add_response(
            "update_function_code",
            {"CodeSha256": sha},
            {"FunctionName": FUNCTION, "ZipFile": data},
        )
        stub.add_response("get_function_configuration", ready, {"FunctionName": FUNCTION})
        stub.add_response(
            "publish_version",
            {"Version": "1", "Description": f"canarist {V1}"},
            {"FunctionName": FUNCTION, "Description": f"canarist {V2}", "CodeSha256": sha},
        )
        stub.add_response(
            "update_function_configuration",
            {"Description": f"canarist {V2}"},
            {"FunctionName": FUNCTION, "Description": f"canarist {V2}"},
        )
        stub.add_response("get_function_configuration", ready, {"FunctionName": FUNCTION})
        stub.add_response(
            "publish_version",
            {"Version": "2", "Description": f"canarist {V2}"},
            {"FunctionName": FUNCTION, "Description": f"canarist {V2}", "CodeSha256": sha},
        )
        assert await platform.prepare(V2, data) == "2"
        stub.assert_no_pending_responses()
