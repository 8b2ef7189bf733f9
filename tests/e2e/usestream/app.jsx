// A chat page as a web app would write it with LangGraph's `useStream` (React), run by
// tests/e2e/test_usestream_page.py against `agentworker serve` in headless Chromium.
//
// The page is served from an origin of its own; what it talks to comes in the URL's fragment
// (never sent to the page's server): `#api=<agentworker URL>&token=<token>&assistant=<id>`,
// and `thread=<id>` once it has one, so a reload shows the same thread.
import { useStream } from "@langchain/langgraph-sdk/react";
import { useEffect, useState } from "react";
import { createRoot } from "react-dom/client";

const params = new URLSearchParams(window.location.hash.slice(1));

function remember(threadId) {
  params.set("thread", threadId);
  window.history.replaceState(null, "", `#${params}`);
}

function textOf(message) {
  if (typeof message.content === "string") return message.content;
  return (message.content ?? [])
    .map((part) => (typeof part === "string" ? part : (part.text ?? "")))
    .join("");
}

const WHO = { human: "You", ai: "Agent", tool: "Tool" };

function Message({ thread, message, index }) {
  // Set only for a message that came in pieces, as the run streamed it (`messages` events).
  const streamed = thread.getMessagesMetadata(message, index)?.streamMetadata;
  const calls = (message.tool_calls ?? []).map((call) => call.name).join(", ");
  return (
    <li className="message" data-type={message.type} data-node={streamed?.langgraph_node ?? ""}>
      <b>{WHO[message.type] ?? message.type}: </b>
      <span className="text">{textOf(message)}</span>
      {calls ? <i> (calls {calls})</i> : null}
    </li>
  );
}

function Question({ thread }) {
  // What the graph asks before it goes on: an `interrupt()` or, here, a tool approval.
  const asked = thread.interrupt;
  if (asked === undefined || Array.isArray(asked)) return null;
  const value = asked.value ?? {};
  const answer = (resume) => thread.submit(undefined, { command: { resume } });
  return (
    <div id="interrupt" data-kind={value.type ?? ""}>
      <p id="question">{value.text ?? JSON.stringify(value)}</p>
      <button id="approve" type="button" onClick={() => answer(true)}>
        Approve
      </button>
      <button id="reject" type="button" onClick={() => answer(false)}>
        Reject
      </button>
    </div>
  );
}

function App() {
  const [threadId, setThreadId] = useState(params.get("thread"));
  const [draft, setDraft] = useState("");
  const thread = useStream({
    apiUrl: params.get("api"),
    apiKey: params.get("token"),
    assistantId: params.get("assistant"),
    messagesKey: "messages",
    threadId,
    onThreadId: (id) => {
      remember(id);
      setThreadId(id);
    },
    onError: (error) => console.error("useStream:", error),
  });
  // What the page showed while a run streamed, for the test to read (no other way to tell a
  // reply that grew from one that came whole).
  useEffect(() => {
    if (!thread.isLoading) return;
    const last = thread.messages.at(-1);
    if (last?.type === "ai") (window.seenWhileStreaming ??= []).push(textOf(last));
  });

  const send = (event) => {
    event.preventDefault();
    if (!draft.trim()) return;
    thread.submit({ messages: [{ type: "human", content: draft }] });
    setDraft("");
  };

  return (
    <main>
      <h1>useStream chat</h1>
      <p id="status" data-thread={threadId ?? ""}>
        {thread.isThreadLoading ? "loading" : thread.isLoading ? "streaming" : "idle"}
      </p>
      {thread.error ? <p id="error">{String(thread.error)}</p> : null}
      <ol id="messages">
        {thread.messages.map((message, index) => (
          <Message key={message.id ?? index} thread={thread} message={message} index={index} />
        ))}
      </ol>
      <Question thread={thread} />
      <form onSubmit={send}>
        <input id="draft" value={draft} onChange={(e) => setDraft(e.target.value)} />
        <button id="send" type="submit" disabled={thread.isLoading}>
          Send
        </button>
        <button id="stop" type="button" disabled={!thread.isLoading} onClick={() => thread.stop()}>
          Stop
        </button>
      </form>
    </main>
  );
}

createRoot(document.getElementById("root")).render(<App />);
