"""AWS Lambda as a platform: one published version of the function per release.

`prepare(release)` loads the release's deployment package into the function and publishes
a version whose description is `canarist <reference>`; it returns the version number,
which the Lambda alias router weighs (`RouteTable.targets`). A release already published
is found again by that description, so a second prepare publishes nothing.

The package is a zip, Lambda's format, not the release archive: by default the object
`<prefix>/<64 hex>/lambda.zip` beside the release in the S3 artifact store's bucket, or
bytes handed to `prepare`. Lambda reports the sha256 of the code it took (`CodeSha256`);
for bytes handed over, canarist checks it against its own, and publishes with
`CodeSha256` so that Lambda refuses to publish code that changed in between (a
concurrent update).

Lambda does not publish a new version when neither code nor configuration changed since
the last one: it answers with that version instead. Two releases with byte-identical
packages would then share one version; to keep one version per release, the function's
description is set to the release and the publish retried.

There is nothing to scale or retire: Lambda runs what the alias routes to, and versions
stay, the record of what ran.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from typing import TYPE_CHECKING

from canarist.aws.clients import aws_call
from canarist.domain.release import parse_reference, reference_hex, short_reference
from canarist.errors import AWSError, ConfigError
from canarist.releases.lambda_package import PACKAGE

if TYPE_CHECKING:
    from boto3.session import Session
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_lambda.type_defs import FunctionConfigurationResponseTypeDef

_UPDATE_TIMEOUT = 300.0  # seconds for Lambda to finish taking new code or configuration


class LambdaPlatform:
    """Publishes one version of `function_name` per release (see the module's docstring)."""

    def __init__(
        self,
        session: Session,
        function_name: str,
        *,
        bucket: str | None = None,
        prefix: str = "releases",
        poll: float = 1.0,
    ) -> None:
        if not function_name:
            raise ConfigError("lambda: function_name is required")
        self.function_name = function_name
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.poll = poll
        self.client: LambdaClient = session.client("lambda")
        self._sizes: dict[str, int] = {}

    @staticmethod
    def description(release: str) -> str:
        """How the release's version is described, and found again."""
        return f"canarist {release}"

    def package_key(self, release: str) -> str:
        """The S3 key of the release's deployment package."""
        head = f"{self.prefix}/" if self.prefix else ""
        return f"{head}{reference_hex(release)}/{PACKAGE}"

    async def prepare(self, release: str, zip_file: bytes | None = None) -> str:
        """The version number published for the release, publishing it if needed."""
        release = parse_reference(release)
        if zip_file is None and self.bucket is None:
            raise ConfigError(
                f"lambda: no package for release {short_reference(release)}: "
                "set the bucket, or hand the zip over"
            )
        return await asyncio.to_thread(self._prepare, release, zip_file)

    # Lambda runs as many copies as requests need: a group's "size" is only what the
    # controller asked for, and a published version is as healthy as it will get.

    async def scale(self, release: str, count: int) -> None:
        """Remember the size asked for; Lambda sizes itself."""
        self._sizes[parse_reference(release)] = count

    async def healthy_count(self, release: str) -> int:
        """The size asked for, once the release's version is published (0 before)."""
        release = parse_reference(release)
        if await self.version_of(release) is None:
            return 0
        return self._sizes.get(release, 0)

    async def retire(self, release: str) -> None:
        """Nothing to remove: published versions stay, a record of what ran."""
        self._sizes.pop(parse_reference(release), None)

    async def version_of(self, release: str) -> str | None:
        """The version published for the release, or None."""
        return await asyncio.to_thread(self._find_version, parse_reference(release))

    # -- blocking internals ----------------------------------------------------------------

    def _prepare(self, release: str, zip_file: bytes | None) -> str:
        existing = self._find_version(release)
        if existing is not None:
            return existing
        name = self.function_name
        self._wait_updated()  # Lambda refuses new code while an update is in progress
        with aws_call(f"update the code of Lambda function {name}"):
            if zip_file is not None:
                updated = self.client.update_function_code(FunctionName=name, ZipFile=zip_file)
            else:
                assert self.bucket is not None
                updated = self.client.update_function_code(
                    FunctionName=name, S3Bucket=self.bucket, S3Key=self.package_key(release)
                )
        code_sha = updated["CodeSha256"]
        if zip_file is not None:
            ours = base64.b64encode(hashlib.sha256(zip_file).digest()).decode("ascii")
            if code_sha != ours:
                raise AWSError(
                    f"Lambda function {name} took code with sha256 {code_sha}, "
                    f"not the package of release {short_reference(release)} ({ours})"
                )
        self._wait_updated()
        published = self._publish(release, code_sha)
        if published["Description"] != self.description(release):
            # Same code and configuration as a version already published: Lambda handed
            # that one back. A configuration change makes the next publish a new version.
            with aws_call(f"describe Lambda function {name} as release {release}"):
                self.client.update_function_configuration(
                    FunctionName=name, Description=self.description(release)
                )
            self._wait_updated()
            published = self._publish(release, code_sha)
        return published["Version"]

    def _publish(self, release: str, code_sha: str) -> FunctionConfigurationResponseTypeDef:
        with aws_call(f"publish a version of Lambda function {self.function_name}"):
            return self.client.publish_version(
                FunctionName=self.function_name,
                Description=self.description(release),
                CodeSha256=code_sha,
            )

    def _find_version(self, release: str) -> str | None:
        wanted = self.description(release)
        with aws_call(f"list the versions of Lambda function {self.function_name}"):
            pages = self.client.get_paginator("list_versions_by_function").paginate(
                FunctionName=self.function_name
            )
            for page in pages:
                for version in page.get("Versions", []):
                    number = version.get("Version", "$LATEST")
                    if number != "$LATEST" and version.get("Description") == wanted:
                        return number
        return None

    def _wait_updated(self) -> None:
        """Wait for Lambda to finish an update; publishing sooner is refused."""
        deadline = time.monotonic() + _UPDATE_TIMEOUT
        while True:
            with aws_call(f"read Lambda function {self.function_name}"):
                config = self.client.get_function_configuration(FunctionName=self.function_name)
            status = config.get("LastUpdateStatus", "Successful")
            if status == "Successful":
                return
            if status == "Failed":
                reason = config.get("LastUpdateStatusReason", "no reason given")
                raise AWSError(f"Lambda function {self.function_name} update failed: {reason}")
            if time.monotonic() >= deadline:
                raise AWSError(
                    f"Lambda function {self.function_name} still updating after "
                    f"{_UPDATE_TIMEOUT:g}s"
                )
            time.sleep(self.poll)
