"""S3 as the artifact store of larger estates: releases pushed and fetched by digest.

Layout, the local store's minus its metadata::

    s3://BUCKET/PREFIX/<64 hex>/release.tar.gz    uploaded first
    s3://BUCKET/PREFIX/<64 hex>/manifest.json     uploaded last: a release is listed once it is

Each object carries its own sha256 in the metadata key `sha256`, so a push skips what is
already there, and its upload is sent with `ChecksumSHA256` so that S3 refuses bytes
damaged on the way.

None of that is trusted on the way back. `fetch` checks the bytes itself: the manifest
must hash to the reference and be canonical, and the archive must hold exactly what the
manifest pins, which the local store checks in full before it commits anything. A bucket
someone could write to can deny a release, never substitute one.

Blocking calls: run them in a thread from async code.
"""

from __future__ import annotations

import base64
import hashlib
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from canarist.aws.clients import aws_call, session
from canarist.domain.release import (
    REFERENCE_PREFIX,
    Manifest,
    parse_reference,
    reference_hex,
    short_reference,
)
from canarist.errors import AWSError, ConfigError, TamperedRelease, UnknownRelease
from canarist.releases.store import ARCHIVE, MANIFEST, LocalArtifactStore

if TYPE_CHECKING:
    from boto3.session import Session
    from mypy_boto3_s3 import S3Client

SHA256_METADATA = "sha256"  # x-amz-meta-sha256: the hex sha256 of the object's bytes

_CHUNK = 1 << 20
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class S3ArtifactStore:
    """Releases in an S3 bucket under a prefix, addressed by digest and verified by canarist."""

    def __init__(self, session: Session, bucket: str, prefix: str = "releases") -> None:
        if not _BUCKET.match(bucket):
            raise ConfigError(f"{bucket!r} is not an S3 bucket name")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client: S3Client = session.client("s3")

    def key(self, ref: str, name: str) -> str:
        """The object key of one of a release's files (MANIFEST or ARCHIVE)."""
        head = f"{self.prefix}/" if self.prefix else ""
        return f"{head}{reference_hex(ref)}/{name}"

    def url(self, ref: str, name: str) -> str:
        """s3://bucket/key of one of a release's files, for messages and instance user data."""
        return f"s3://{self.bucket}/{self.key(ref, name)}"

    # -- writing ---------------------------------------------------------------------------

    def push(self, local: LocalArtifactStore, ref: str) -> bool:
        """Upload a release from the local store; False when S3 already held both files."""
        ref = parse_reference(ref)
        # Only a release that verifies in full leaves this machine.
        manifest = local.verify(ref)
        archive = local.root / reference_hex(ref) / ARCHIVE
        archive_sha = _file_sha256(archive)
        uploaded = False
        if self._stored_sha256(self.key(ref, ARCHIVE)) != archive_sha:
            with open(archive, "rb") as body:
                self._put(self.key(ref, ARCHIVE), body, archive_sha)
            uploaded = True
        if self._stored_sha256(self.key(ref, MANIFEST)) != reference_hex(ref):
            self._put(self.key(ref, MANIFEST), manifest.canonical_bytes(), reference_hex(ref))
            uploaded = True
        return uploaded

    # -- reading ---------------------------------------------------------------------------

    def manifest(self, ref: str) -> Manifest:
        """A release's manifest read from S3, checked against the digest (archive not read)."""
        ref = parse_reference(ref)
        data = self._get_bytes(ref, MANIFEST)
        if data is None:
            raise UnknownRelease(
                f"release {short_reference(ref)} is not in s3://{self.bucket}/{self.prefix}"
            )
        if hashlib.sha256(data).hexdigest() != reference_hex(ref):
            raise self._tampered(ref, f"{MANIFEST} does not hash to the reference")
        try:
            manifest = Manifest.from_bytes(data)
        except ValueError as exc:
            raise self._tampered(ref, f"{MANIFEST} is malformed ({exc})") from exc
        if manifest.canonical_bytes() != data:
            raise self._tampered(ref, f"{MANIFEST} is not in canonical form")
        return manifest

    def fetch(self, ref: str, local: LocalArtifactStore) -> str:
        """Download a release into the local store, which commits it only if it verifies.

        A release the local store already holds is not downloaded again. Raises
        UnknownRelease when S3 has no such release, TamperedRelease when its bytes do not
        match the digest; the local store is left unchanged then.
        """
        ref = parse_reference(ref)
        try:
            local.manifest(ref)
            return ref
        except UnknownRelease:
            pass
        manifest = self.manifest(ref)
        with tempfile.TemporaryDirectory(prefix="canarist-fetch-") as tmp:
            archive = Path(tmp) / ARCHIVE
            if not self._download(ref, ARCHIVE, archive):
                raise self._tampered(ref, f"{ARCHIVE} is missing")
            try:
                local.put(manifest, archive)
            except TamperedRelease as exc:
                raise TamperedRelease(f"{exc} (as fetched from {self.url(ref, '')})") from exc
        return ref

    def list(self) -> list[str]:
        """The references of every release in the bucket under the prefix, sorted."""
        head = f"{self.prefix}/" if self.prefix else ""
        pattern = re.compile(rf"^{re.escape(head)}([0-9a-f]{{64}})/{re.escape(MANIFEST)}$")
        refs = []
        with aws_call(f"list s3://{self.bucket}/{head}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=head
            )
            for page in pages:
                for item in page.get("Contents", []):
                    match = pattern.match(item.get("Key", ""))
                    if match:
                        refs.append(REFERENCE_PREFIX + match.group(1))
        return sorted(refs)

    # -- internals -------------------------------------------------------------------------

    def _tampered(self, ref: str, detail: str) -> TamperedRelease:
        return TamperedRelease(
            f"release {short_reference(ref)} in s3://{self.bucket}/{self.prefix} "
            f"does not match its digest: {detail}"
        )

    def _stored_sha256(self, key: str) -> str | None:
        try:
            with aws_call(f"read s3://{self.bucket}/{key}"):
                head = self.client.head_object(Bucket=self.bucket, Key=key)
        except AWSError as exc:
            if exc.code in _NOT_FOUND:
                return None
            raise
        return head.get("Metadata", {}).get(SHA256_METADATA)

    def _put(self, key: str, body: bytes | BinaryIO, sha256_hex: str) -> None:
        with aws_call(f"upload s3://{self.bucket}/{key}"):
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii"),
                Metadata={SHA256_METADATA: sha256_hex},
            )

    def _get_bytes(self, ref: str, name: str) -> bytes | None:
        key = self.key(ref, name)
        try:
            with aws_call(f"read s3://{self.bucket}/{key}"):
                return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except AWSError as exc:
            if exc.code in _NOT_FOUND:
                return None
            raise

    def _download(self, ref: str, name: str, dest: Path) -> bool:
        key = self.key(ref, name)
        try:
            with aws_call(f"read s3://{self.bucket}/{key}"), open(dest, "wb") as out:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
                for chunk in body.iter_chunks(_CHUNK):
                    out.write(chunk)
        except AWSError as exc:
            if exc.code in _NOT_FOUND:
                return False
            raise
        return True


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def push_release(
    artifacts: Path,
    venvs: Path,
    release: str,
    bucket: str,
    prefix: str,
    region: str | None,
    lambda_zip: bool = False,
) -> tuple[bool, str]:
    """Push a release of the local store at `artifacts` to S3; (uploaded?, reference).

    With `lambda_zip`, its Lambda deployment package goes beside it too.
    """
    from canarist.releases.lambda_package import PACKAGE, lambda_package

    local = LocalArtifactStore(artifacts, venv_root=venvs)
    ref = local.resolve(release)
    with aws_call(f"push {ref} to s3://{bucket}/{prefix}"):
        aws = session(region=region)
        store = S3ArtifactStore(aws, bucket, prefix)
        pushed = store.push(local, ref)
        if lambda_zip:
            aws.client("s3").put_object(
                Bucket=bucket, Key=store.key(ref, PACKAGE), Body=lambda_package(local, ref)
            )
    return pushed, ref
