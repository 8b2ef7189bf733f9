"""A triage bot: classifies each request, asks when it cannot tell, keeps a running summary."""
