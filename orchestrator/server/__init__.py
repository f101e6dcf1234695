"""``oi serve`` and ``oi mcp``: adapters over ``Session`` for HTTP clients, OpenAI clients,
MCP clients and the web UI (see ``app.py``)."""
