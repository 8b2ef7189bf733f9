"""The LangGraph agent: graph, tools, prompts, models. Imported only by the ``turn`` side."""
