"""Development and test tooling, never shipped in a Lambda bundle: the moto emulator of the
AWS stack (``emulator``), the ``agentworker sandbox`` server and client (``server``), and the
model stubs that speak the providers' HTTP APIs (``converse_stub`` for Bedrock,
``openai_stub`` for OpenAI chat completions)."""
