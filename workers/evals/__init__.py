"""Evaluation: golden datasets run through the app and the turn contract, scored, logged to
MLflow and gated (``agentworker eval``)."""

from workers.evals.dataset import (
    Dataset,
    EvalCase,
    EvalTurn,
    ToolCallExpectation,
    TurnExpectation,
    load_datasets,
)
from workers.evals.scorers import CaseResult, TurnResult, metrics, score_case

__all__ = [
    "CaseResult",
    "Dataset",
    "EvalCase",
    "EvalTurn",
    "ToolCallExpectation",
    "TurnExpectation",
    "TurnResult",
    "load_datasets",
    "metrics",
    "score_case",
]
