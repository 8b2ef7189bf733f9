"""What each Lambda function's bundle leaves out of the closure of the base
``[project] dependencies``, and why: the one source of truth for trimming the bundle.

``bench/bundle_size.py`` reports the trimmed size next to the untrimmed closure, and
``tests/e2e/test_lambda_bundle.py`` uninstalls these distributions from a fresh
``pip install .`` and still runs the real ``turn`` handler (ChatBedrockConverse against the
Converse stub, LangGraph, mlflow-tracing to an MLflow server, DynamoDB/S3/SNS, Powertools).
On the untrimmed install the same code path (checked in ``sys.modules`` and with
``python -X importtime``) imports none of them but ``zstandard``, an optional import.
Keys are canonical distribution names (PEP 503); every excluded distribution is listed,
including the ones that only excluded distributions require.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

EXCLUDED: Final[Mapping[str, Mapping[str, str]]] = MappingProxyType(
    {
        "turn": MappingProxyType(
            {
                "numpy": "langchain-aws imports it only for embeddings, vector stores and "
                "utilities (loaded lazily); ChatBedrockConverse does not import it",
                "zstandard": "langsmith imports it optionally (try/except ImportError) to "
                "compress runs sent to LangSmith; we never enable LangSmith tracing",
                "databricks-sdk": "mlflow-tracing imports it inside functions, for "
                "Databricks tracking URIs and auth only; we trace to an MLflow HTTP server",
                "google-auth": "required only by databricks-sdk",
                "pyasn1-modules": "required only by google-auth",
                "pyasn1": "required only by pyasn1-modules",
                "cryptography": "required by google-auth, and by PyJWT for RS256/ES256"
                " tokens; turn verifies no tokens (the entry points do)",
                "cffi": "required only by cryptography",
                "pycparser": "required only by cffi",
            }
        ),
    }
)
"""Per Lambda function: excluded distribution -> why that function never needs it."""


def excluded(function: str) -> Mapping[str, str]:
    """The distributions ``function``'s bundle leaves out (none if it has no entry)."""
    return EXCLUDED.get(function, MappingProxyType({}))
