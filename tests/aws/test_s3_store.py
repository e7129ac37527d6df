"""The S3 artifact store against moto: pushed and fetched by digest, verified by canarist."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from canarist.errors import TamperedRelease, UnknownRelease
from canarist.releases.build import build_release
from canarist.releases.s3 import S3ArtifactStore
from canarist.releases.store import LocalArtifactStore
from tests.aws.conftest import REGION, create_lambda
from tests.releases.conftest import write_app

pytestmark = pytest.mark.aws

BUCKET = "canarist-releases"


@pytest.fixture
def built(tmp_path: Path) -> tuple[LocalArtifactStore, str]:
    """A local store holding one freshly built release."""
    store = LocalArtifactStore(tmp_path / "built" / "artifacts")
    return store, build_release(write_app(tmp_path / "app"), store)


@pytest.fixture
def s3store(aws: Any) -> S3ArtifactStore:
    aws.client("s3").create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    return S3ArtifactStore(aws, BUCKET, "releases")


def empty_store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "elsewhere" / "artifacts")


def flip_a_byte(aws: Any, key: str) -> None:
    """Rewrite an object in the bucket with one byte inverted (its metadata kept)."""
    s3 = aws.client("s3")
    obj = s3.get_object(Bucket=BUCKET, Key=key)
    data = bytearray(obj["Body"].read())
    data[len(data) // 2] ^= 0xFF
    s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(data), Metadata=obj["Metadata"])


def test_push_then_fetch_into_an_empty_store(
    built: tuple[LocalArtifactStore, str], s3store: S3ArtifactStore, tmp_path: Path
) -> None:
    """A pushed release comes back under the same reference, and verifies in full."""
    store, ref = built
    assert s3store.push(store, ref) is True
    assert s3store.push(store, ref) is False  # already there: nothing uploaded again
    assert s3store.list() == [ref]
    elsewhere = empty_store(tmp_path)
    assert s3store.fetch(ref, elsewhere) == ref
    assert elsewhere.verify(ref) == store.manifest(ref)
    assert [r.ref for r in elsewhere.list()] == [ref]
    assert s3store.fetch(ref, elsewhere) == ref  # held locally: a no-op


def test_objects_carry_their_sha256(
    aws: Any, built: tuple[LocalArtifactStore, str], s3store: S3ArtifactStore
) -> None:
    """Both objects sit under <prefix>/<hex>/ with their sha256 in the metadata."""
    store, ref = built
    s3store.push(store, ref)
    hex_digest = ref.removeprefix("sha256:")
    head = aws.client("s3").head_object(Bucket=BUCKET, Key=f"releases/{hex_digest}/manifest.json")
    assert head["Metadata"]["sha256"] == hex_digest
    keys = {o["Key"] for o in aws.client("s3").list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert keys == {
        f"releases/{hex_digest}/manifest.json",
        f"releases/{hex_digest}/release.tar.gz",
    }


@pytest.mark.parametrize("name", ["release.tar.gz", "manifest.json"])
def test_a_tampered_object_is_refused_and_nothing_is_stored(
    aws: Any,
    built: tuple[LocalArtifactStore, str],
    s3store: S3ArtifactStore,
    tmp_path: Path,
    name: str,
) -> None:
    """One flipped byte in S3, archive or manifest: TamperedRelease, the local store unchanged."""
    store, ref = built
    s3store.push(store, ref)
    flip_a_byte(aws, f"releases/{ref.removeprefix('sha256:')}/{name}")
    elsewhere = empty_store(tmp_path)
    with pytest.raises(TamperedRelease, match="does not match its digest") as caught:
        s3store.fetch(ref, elsewhere)
    assert "\n" not in str(caught.value)
    assert elsewhere.list() == []
    assert not elsewhere.root.exists() or not any(
        p.name != ".lock" for p in elsewhere.root.iterdir()
    )


def test_an_archive_missing_from_s3_is_refused(
    aws: Any, built: tuple[LocalArtifactStore, str], s3store: S3ArtifactStore, tmp_path: Path
) -> None:
    """A manifest without its archive is a damaged release, not an absent one."""
    store, ref = built
    s3store.push(store, ref)
    key = f"releases/{ref.removeprefix('sha256:')}/release.tar.gz"
    aws.client("s3").delete_object(Bucket=BUCKET, Key=key)
    with pytest.raises(TamperedRelease, match=r"release\.tar\.gz is missing"):
        s3store.fetch(ref, empty_store(tmp_path))


def test_an_unknown_release_is_unknown(s3store: S3ArtifactStore, tmp_path: Path) -> None:
    """A digest the bucket does not hold: UnknownRelease; a malformed one too."""
    with pytest.raises(UnknownRelease, match="is not in s3://canarist-releases/releases"):
        s3store.fetch("sha256:" + "0" * 64, empty_store(tmp_path))
    with pytest.raises(UnknownRelease):
        s3store.fetch("sha256:nothex", empty_store(tmp_path))
    assert s3store.list() == []


def test_a_locally_tampered_release_is_not_pushed(
    built: tuple[LocalArtifactStore, str], s3store: S3ArtifactStore
) -> None:
    """Only a release that verifies leaves the machine."""
    store, ref = built
    archive = store.root / ref.removeprefix("sha256:") / "release.tar.gz"
    archive.chmod(0o644)
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(TamperedRelease):
        s3store.push(store, ref)
    assert s3store.list() == []


def test_canarist_push_uploads_a_release_by_label(aws: Any, tmp_path: Path) -> None:
    """`canarist push v1 --bucket B` uploads the local release; a second push uploads nothing."""
    from tests.e2e.harness import Canarist

    aws.client("s3").create_bucket(
        Bucket="pushed", CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    cli = Canarist(tmp_path, 0)  # its environment carries the `aws` fixture's moto settings
    app = tmp_path / "app"
    app.mkdir()
    (app / "server.py").write_text("print('hi')\n")
    (app / "pyproject.toml").write_text('[tool.canarist.app]\ncommand = ["python", "server.py"]\n')
    ref = cli("build", str(app), "--label", "v1").stdout.strip().splitlines()[-1]
    first = cli("push", "v1", "--bucket", "pushed")
    assert "pushed" in first.stdout
    assert S3ArtifactStore(aws, "pushed").list() == [ref]
    assert "already in" in cli("push", "v1", "--bucket", "pushed").stdout
    assert cli("push", "nope", "--bucket", "pushed", check=False).code == 2


def test_push_with_a_lambda_package(aws: Any, tmp_path: Path) -> None:
    """`push --lambda` puts a zip beside the release: its app files and its dependencies,
    the same bytes every time; the Lambda platform publishes a version from it."""
    import asyncio
    import io
    import zipfile

    from canarist.platforms.aws_lambda import LambdaPlatform
    from tests.e2e.harness import Canarist

    aws.client("s3").create_bucket(
        Bucket="functions", CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    cli = Canarist(tmp_path, 0)  # its environment carries the `aws` fixture's moto settings
    app = tmp_path / "app"
    app.mkdir()
    (app / "handler.py").write_text("import six\ndef main(event, context):\n    return six.PY3\n")
    (app / "pyproject.toml").write_text(
        '[project]\ndependencies = ["six==1.16.0"]\n'
        '[tool.canarist.app]\ncommand = ["python", "handler.py"]\n'
    )
    ref = cli("build", str(app)).stdout.strip().splitlines()[-1]
    cli("push", ref, "--bucket", "functions", "--lambda")
    platform = LambdaPlatform(aws, "checkout", bucket="functions")
    s3 = aws.client("s3")
    body = s3.get_object(Bucket="functions", Key=platform.package_key(ref))["Body"].read()
    names = zipfile.ZipFile(io.BytesIO(body)).namelist()
    assert "handler.py" in names and "six.py" in names and "pyproject.toml" in names
    cli("push", ref, "--bucket", "functions", "--lambda")
    again = s3.get_object(Bucket="functions", Key=platform.package_key(ref))["Body"].read()
    assert again == body  # reproducible
    create_lambda(aws, "checkout", body)
    assert asyncio.run(platform.prepare(ref)) == "1"
