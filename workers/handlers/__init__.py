"""Lambda entry points: parse the event with our models, call the core, return. Nothing else.

``ingest``, ``deliver``, ``approve``, ``sweeper`` and ``slack`` never import LangGraph, LangChain or
MLflow (cold start); only ``turn`` builds the agent.
"""
