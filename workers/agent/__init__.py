"""Running an app's LangGraph graph one turn at a time: loading it (``app``), the turn runner
(``runner``), the staged checkpoint saver, model and tool spans (``callbacks``), the model
factory and the offline model, and the SDK apps use (``sdk``, re-exported by ``agentworker``).
Imported only by the ``turn`` side."""
