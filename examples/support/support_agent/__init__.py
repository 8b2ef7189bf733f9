"""The support agent: tickets, FAQ and time tools, approval before a ticket changes."""
