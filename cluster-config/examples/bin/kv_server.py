#!/usr/bin/env python3
"""Server of the example `kv` process plugin (see ../kv.toml).

A long-running process: the node writes one JSON request per line on stdin
({"id", "command", "input"}) and reads one JSON reply per line on stdout
({"id", "output"} or {"id", "error"}). It may also ask the node to publish an
event ({"publish": {"topic", "payload"}}); the node publishes it as this
plugin, and only on the topics kv.toml declares. When stdin closes (the node
went away) the server exits.
"""
import json
import os
import sys

store = {}


def reply(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def handle(command, inp):
    if command == "put":
        key, value = inp.get("key"), inp.get("value")
        if not isinstance(key, str):
            raise ValueError("input field 'key' must be a string")
        store[key] = value
        reply({"publish": {"topic": "plugin/kv/events", "payload": {"op": "put", "key": key}}})
        return {"key": key, "stored": True, "size": len(store)}
    if command == "get":
        key = inp.get("key")
        if key not in store:
            raise KeyError(f"no key {key!r}")
        return {"key": key, "value": store[key]}
    if command == "list":
        return {"keys": sorted(store), "pid": os.getpid()}
    if command == "stop":
        # Exit on purpose: the node's supervisor restarts the server
        # (the store starts empty again).
        sys.exit(0)
    raise ValueError(f"unknown command {command!r}")


for line in sys.stdin:
    try:
        req = json.loads(line)
    except ValueError as e:
        print(f"bad request line: {e}", file=sys.stderr)
        continue
    try:
        reply({"id": req["id"], "output": handle(req.get("command"), req.get("input") or {})})
    except (ValueError, KeyError) as e:
        # The request was wrong, not the server: not retried, not counted
        # against the plugin's circuit breaker.
        reply({"id": req["id"], "error": str(e), "badInput": True})
