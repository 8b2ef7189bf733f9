"""The transport-free core: ports and the five steps of the turn contract. No I/O here."""
