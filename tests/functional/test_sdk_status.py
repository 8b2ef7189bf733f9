"""The SDK's ``set_status``: a graph says what its reply means for the matter ("solved"), the
reply carries it, and it costs nothing where agentworker does not serve the graph."""

from __future__ import annotations

import pytest
from langchain_core.messages import HumanMessage

from agentworker import set_status
from agentworker.testing import LocalApp
from events.outbound import Reply
from tests.langgraph_apps.followup_agent import graph

GRAPH = "tests.langgraph_apps.followup_agent:graph"


def test_the_reply_carries_the_status_the_graph_set() -> None:
    with LocalApp(graph=GRAPH) as app:
        said = app.send("ws:me:solved", "thanks, it works")
        assert isinstance(said, Reply)
        assert (said.text, said.status) == ("Glad it works.", "solved")
        plain = app.send("ws:me:solved", "and another thing")
        assert isinstance(plain, Reply) and plain.status is None  # said for its turn only


def test_under_plain_langgraph_set_status_changes_nothing_and_bad_ones_are_refused() -> None:
    out = graph.invoke({"messages": [HumanMessage("thanks, it works")]})
    assert out["messages"][-1].text == "Glad it works."
    with pytest.raises(ValueError, match="lowercase"):
        set_status("Solved!")
