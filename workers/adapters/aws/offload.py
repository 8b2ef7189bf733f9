"""Blobs too large for a DynamoDB item go to S3; the item keeps a pointer.

Used for checkpoints, log entries and outbox payloads. An object's key is unique per write
(``conversations/<conversation>/<kind>/<tag>-<random>``), so a stale run can never overwrite
the live object: it writes its object first, then its fenced transaction fails and the object
is an orphan, deleted here on a best-effort basis. A crash between the two leaves an orphan
too; a lifecycle rule on ``conversations/`` that expires objects no pointer references (or a
periodic sweep comparing the prefix with the pointers) reclaims them.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from workers.adapters.aws.calls import AwsCalls, Item
from workers.errors import PermanentError

log = logging.getLogger(__name__)

INLINE_LIMIT_BYTES = 350_000
"""Largest blob stored inside its item: DynamoDB's item limit is 400 KB, keys included."""

TRANSACTION_BUDGET_BYTES = 3_500_000
"""Inline bytes one commit may carry: ``TransactWriteItems`` takes at most 4 MB in all."""

DATA_ATTRIBUTE = "data"
S3_KEY_ATTRIBUTE = "data_s3_key"


@dataclass(frozen=True)
class Blob:
    kind: str
    """``checkpoint``, ``log`` or ``outbox``: the folder of its S3 key."""
    data: bytes


class S3Offload:
    """Places blobs inline or in S3 (``SSE-S3`` encrypted) and reads them back."""

    def __init__(
        self,
        s3: Any | None,
        bucket: str | None,
        *,
        calls: AwsCalls,
        inline_limit: int = INLINE_LIMIT_BYTES,
        transaction_budget: int = TRANSACTION_BUDGET_BYTES,
    ) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._calls = calls
        self.inline_limit = inline_limit
        self.transaction_budget = transaction_budget

    def place(self, conversation_id: str, tag: str, blobs: Sequence[Blob]) -> list[Item]:
        """The item attributes of each blob: inline data, or the key of an S3 object written
        now. Blobs over the inline limit go to S3, then the largest others until the inline
        total fits one transaction."""
        offload = {i for i, b in enumerate(blobs) if len(b.data) > self.inline_limit}
        inline_total = sum(len(b.data) for i, b in enumerate(blobs) if i not in offload)
        for i in sorted(range(len(blobs)), key=lambda i: -len(blobs[i].data)):
            if inline_total <= self.transaction_budget:
                break
            if i not in offload:
                offload.add(i)
                inline_total -= len(blobs[i].data)
        placed: list[Item] = []
        for i, blob in enumerate(blobs):
            if i in offload:
                key = self._put(conversation_id, blob.kind, tag, blob.data)
                placed.append({S3_KEY_ATTRIBUTE: {"S": key}})
            else:
                placed.append({DATA_ATTRIBUTE: {"B": blob.data}})
        return placed

    def read(self, item: Item) -> bytes:
        """The blob of ``item``: its inline data, or its S3 object."""
        if DATA_ATTRIBUTE in item:
            return bytes(item[DATA_ATTRIBUTE]["B"])
        key = str(item[S3_KEY_ATTRIBUTE]["S"])
        s3, bucket = self._client(key)
        response = self._calls(s3, "s3", "get_object", Bucket=bucket, Key=key)
        return bytes(response["Body"].read())

    @staticmethod
    def s3_key(attributes: Item) -> str | None:
        """The S3 key of placed attributes or of an item, if its blob lives in S3."""
        pointer = attributes.get(S3_KEY_ATTRIBUTE)
        return None if pointer is None else str(pointer["S"])

    def discard(self, keys: Sequence[str | None]) -> None:
        """Delete objects no pointer references (best effort: an orphan is only storage)."""
        for key in keys:
            if key is None:
                continue
            s3, bucket = self._client(key)
            try:
                self._calls(s3, "s3", "delete_object", Bucket=bucket, Key=key)
            except Exception:  # cleanup must not mask the outcome the caller is reporting
                log.warning("could not delete orphan s3://%s/%s", bucket, key, exc_info=True)

    def forget(self, conversation_id: str) -> int:
        """Delete every object of the conversation (pointed to or orphaned), every version
        of it too (the bucket is versioned); how many objects there were."""
        if self._s3 is None or self._bucket is None:
            return 0
        s3, bucket, objects = self._s3, self._bucket, set()
        prefix = f"conversations/{conversation_id}/"
        token: dict[str, str] = {}
        while True:
            page = self._calls(
                s3, "s3", "list_object_versions", Bucket=bucket, Prefix=prefix, **token
            )
            versions = [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
            if versions:
                doomed = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in versions]
                self._calls(s3, "s3", "delete_objects", Bucket=bucket, Delete={"Objects": doomed})
                objects |= {v["Key"] for v in page.get("Versions", [])}
            if not page.get("IsTruncated"):
                return len(objects)
            token = {
                "KeyMarker": page["NextKeyMarker"],
                "VersionIdMarker": page["NextVersionIdMarker"],
            }

    def _put(self, conversation_id: str, kind: str, tag: str, data: bytes) -> str:
        key = f"conversations/{conversation_id}/{kind}/{tag}-{uuid.uuid4().hex}"
        s3, bucket = self._client(key)
        self._calls(
            s3,
            "s3",
            "put_object",
            Bucket=bucket,
            Key=key,
            Body=data,
            ServerSideEncryption="AES256",
        )
        return key

    def _client(self, key: str) -> tuple[Any, str]:
        if self._s3 is None or self._bucket is None:
            raise PermanentError(
                f"{key}: blobs over {self.inline_limit} bytes need an S3 bucket, none is "
                "configured for the DynamoDB store"
            )
        return self._s3, self._bucket
