"""Where a study's per-seed histories and pictures live: one Optuna artifact store that every machine of the study
names alike (`--artifacts`), and that `study dashboard` serves.

- default: the directory `studies/NAME/artifacts` beside the study (one machine);
- a directory every machine mounts at its own path (NFS, a shared disk);
- `s3://bucket` or `s3://bucket/prefix`: Optuna's Boto3 store, where boto3 is installed (credentials
  as boto3 finds them: environment, ~/.aws, an instance role; never on the command line).

A picture is a convenience, never a result: a store that lacks one (a machine that used another
store) leaves the seed's record as it is (`records.reused_record`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import BinaryIO

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

from study.errors import BadInput
from study.place import StudyPlace, make_dir

S3_SCHEME = "s3://"


def check_artifacts(location: str | None) -> None:
    """BadInput where `location` cannot be a store here (an S3 URL without a bucket, or without
    boto3), before anything is written."""
    if location is not None and location.startswith(S3_SCHEME):
        if not location[len(S3_SCHEME):].partition("/")[0]:
            raise BadInput(f"`artifacts` {location!r} names no bucket: write s3://bucket or s3://bucket/prefix")
        try:
            import boto3  # noqa: F401  (Optuna's Boto3 store imports it itself; this gives the message)
        except ImportError:
            raise BadInput("`artifacts` s3://... needs boto3 on this machine: pip install boto3 "
                           "(or name a directory every machine shares)") from None


def artifact_store(location: str | None, place: StudyPlace):
    """The artifact store at `location` (see the module docstring); the study's own directory when None."""
    check_artifacts(location)
    if location is not None and location.startswith(S3_SCHEME):
        bucket, _, prefix = location[len(S3_SCHEME):].partition("/")
        from optuna.artifacts import Boto3ArtifactStore

        store = Boto3ArtifactStore(bucket)
        return Prefixed(store, prefix) if prefix.strip("/") else store
    directory = Path(location) if location is not None else place.artifacts()
    make_dir(directory)
    return FileSystemArtifactStore(str(directory))


def upload_bytes(store, data: bytes, trial: optuna.Trial, filename: str, mimetype: str | None = None) -> str:
    """`data` as an artifact of the running `trial`, named `filename`; its artifact id."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / filename
        path.write_bytes(data)
        return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial, mimetype=mimetype)


def read_bytes(store, artifact_id: str) -> bytes | None:
    """The artifact's body; None where the store lacks it."""
    try:
        reader = store.open_reader(artifact_id)
    except ArtifactNotFound:
        return None
    try:
        return reader.read()
    finally:
        reader.close()


class Prefixed:
    """An artifact store whose every key starts with `prefix/`: several studies (or projects) in one
    S3 bucket. Optuna's artifact-store protocol: open_reader, write, remove."""

    def __init__(self, store, prefix: str):
        self.store, self.prefix = store, prefix.strip("/") + "/"

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self.store.open_reader(self.prefix + artifact_id)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.store.write(self.prefix + artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(self.prefix + artifact_id)
