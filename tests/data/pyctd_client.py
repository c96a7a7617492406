#!/usr/bin/env python3
"""An existing pyctd frontend's side of the XML-RPC API, with only the standard library.

usage: pyctd_client.py URL CALLS-JSON
CALLS-JSON is a list of [method, [args...]]; every call goes through one ServerProxy (so one
kept-alive HTTP connection, as a frontend would use). Prints one JSON list: {"ok": value} or
{"fault": [code, string]} or {"error": text} per call. The method "__huge__" sends a login
whose user name is ARGS[0] bytes long.
"""
import json
import sys
import xmlrpc.client

url, calls = sys.argv[1], json.loads(sys.argv[2])
proxy = xmlrpc.client.ServerProxy(url)
out = []
for method, args in calls:
    try:
        if method == "__huge__":
            result = proxy.login("x" * args[0], "y")
        else:
            result = getattr(proxy, method)(*args)
        out.append({"ok": result})
    except xmlrpc.client.Fault as f:
        out.append({"fault": [f.faultCode, f.faultString]})
    except Exception as e:  # a protocol error or a reset: reported, the next call goes on
        out.append({"error": repr(e)})
        proxy = xmlrpc.client.ServerProxy(url)
print(json.dumps(out))
