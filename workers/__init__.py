"""agentworker: advance LLM agents one turn at a time, correctly under retries and concurrency."""

__version__ = "0.1.0"
