"""Serve mcp-server-time's tools over streamable HTTP.

The PyPI package only speaks stdio; this runs the same server object on
the MCP SDK's streamable HTTP transport, so Plexus's HTTP transport can be
tried (and is tested) against a real server:

    .venv-mcp/bin/python scripts/mcp-time-http.py 8931   # http://127.0.0.1:8931/mcp
"""

import sys

from mcp_server_time.server import create_server

if len(sys.argv) != 2 or not sys.argv[1].isdigit():
    sys.exit("usage: mcp-time-http.py PORT")
create_server("UTC").run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
