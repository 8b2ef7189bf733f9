"""LangGraph apps written here in the style of LangGraph's own templates and docs (not
copied): what a team brings to agentworker unchanged."""
