"""boto3 clients for the AWS drivers, and botocore's errors translated at this edge."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import boto3
import botocore.exceptions

from canarist.errors import AWSError


def session(region: str | None = None, profile: str | None = None) -> boto3.session.Session:
    """A boto3 session; endpoint overrides (AWS_ENDPOINT_URL) are honoured by boto3 itself."""
    return boto3.session.Session(region_name=region, profile_name=profile)


@contextmanager
def aws_call(what: str) -> Iterator[None]:
    """Translate botocore's exceptions raised inside into AWSError naming `what` failed."""
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = str(error.get("Message", "")) or str(exc)
        raise AWSError(f"{what}: {code}: {message}", code) from exc
    except botocore.exceptions.BotoCoreError as exc:
        raise AWSError(f"{what}: {exc}") from exc
