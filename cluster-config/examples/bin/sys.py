#!/usr/bin/env python3
"""Commands of the example `sys` process plugin (see ../sys.toml).

The node starts this script once per call, in its sandbox: argv comes from
the manifest's templates, the input JSON arrives on stdin, and whatever JSON
this prints on stdout is the command's result. Errors go to stderr with a
non-zero exit code: 65 (EX_DATAERR) or 64 (EX_USAGE) when the input is
wrong (the node reports bad input, not retried), anything else for a failure.
"""
import hashlib
import json
import os
import socket
import sys


def read_input():
    text = sys.stdin.read()
    return json.loads(text) if text.strip() else {}


def wc(inp):
    text = inp.get("text")
    if not isinstance(text, str):
        print("input field 'text' must be a string", file=sys.stderr)
        sys.exit(65)
    return {
        "lines": text.count("\n") + (0 if text.endswith("\n") or not text else 1),
        "words": len(text.split()),
        "bytes": len(text.encode()),
    }


def checksum(inp, algorithm):
    if algorithm not in hashlib.algorithms_guaranteed:
        print(f"unknown algorithm {algorithm!r}; one of {sorted(hashlib.algorithms_guaranteed)}", file=sys.stderr)
        sys.exit(65)
    text = inp.get("text")
    if not isinstance(text, str):
        print("input field 'text' must be a string", file=sys.stderr)
        sys.exit(65)
    h = hashlib.new(algorithm, text.encode())
    return {"algorithm": algorithm, "hex": h.hexdigest() if algorithm[:5] != "shake" else h.hexdigest(32)}


def try_read(path):
    try:
        with open(path, "rb") as f:
            f.read(64)
        return "readable"
    except OSError as e:
        return f"denied: {e.strerror}"


def env_probe(_inp):
    """What the sandbox lets this process see."""
    try:
        # Loopback only: in an empty network namespace even this fails.
        socket.create_connection(("127.0.0.1", 9), timeout=1).close()
        net = "connected"
    except OSError as e:
        net = f"unreachable: {e.strerror or e}"
    return {
        "env": sorted(os.environ),
        "uid": os.getuid(),
        "pid": os.getpid(),
        "network": net,
        "parent_environ": try_read(f"/proc/{os.getppid()}/environ"),
        "etc_passwd": try_read("/etc/passwd"),
        "home": try_read(os.path.expanduser("~root")),
    }


def main():
    if len(sys.argv) < 2:
        print("usage: sys.py wc|checksum ALG|env-probe", file=sys.stderr)
        sys.exit(65)
    inp = read_input()
    cmd = sys.argv[1]
    if cmd == "wc":
        out = wc(inp)
    elif cmd == "checksum" and len(sys.argv) == 3:
        out = checksum(inp, sys.argv[2])
    elif cmd == "env-probe":
        out = env_probe(inp)
    else:
        print(f"unknown command {cmd!r}", file=sys.stderr)
        sys.exit(65)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
