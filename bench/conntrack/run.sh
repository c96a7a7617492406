#!/usr/bin/env bash
# bench/conntrack/run.sh: pyctd's `view` at scale. With N (default 100,000) entries in a network
# namespace's conntrack table, the time to get a filtered, ordered page of 50 (TCP, original
# source in 10.1.0.0/16, by destination port descending) three ways, in one run:
#   - portnanny through the control socket (the JSON lines `nannyctl conntrack refresh` and
#     `nannyctl conntrack list` send): `refresh` + `list`, a fresh dump each time as
#     conntrack-tools always dumps, and `list` alone on the snapshot (pyctd's model);
#   - portnanny through pyctd's XML-RPC API (Python's xmlrpc.client, one kept-alive
#     connection, as a pyctd frontend): `refresh` + `view`, and `view` alone;
#   - conntrack-tools: `conntrack -L -p tcp -s 10.1.0.0/16 | sort by dport | head -50`;
# and the netfilter worker's VmRSS holding that table. Prints median of REPS runs each.
#
# Usage (root): bench/conntrack/run.sh     env: N=100000 REPS=9 KEEP=1 (keep the scratch dir)
#   CARGO_TARGET_DIR (where portnanny is built, release; default target/)
#
# Safety: everything runs inside a network namespace this script creates and deletes
# (`ip netns exec`), so the host's own table is never touched; the daemon started here is
# killed by pid on exit; every wait is bounded (timeout).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
N=${N:-100000}
REPS=${REPS:-9}
target=${CARGO_TARGET_DIR:-$root/target}
PN="$target/release/portnanny"

[ "$(id -u)" -eq 0 ] || { echo "bench/conntrack: needs root" >&2; exit 1; }
for c in conntrack ip python3; do
    command -v "$c" >/dev/null || { echo "bench/conntrack: needs $c" >&2; exit 1; }
done
[ -x "$PN" ] || (cd "$root" && cargo build --release --bin portnanny)

ns="pnct-bench-$$"
work=$(mktemp -d /run/pnct-bench.XXXXXX)
chmod 755 "$work"
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$ns"
ip -n "$ns" link set lo up

echo "filling the namespace's table with $N entries (conntrack -R batch)..."
python3 - "$N" > "$work/batch" <<'PY'
import sys
n = int(sys.argv[1])
for i in range(n):
    a, b = (i >> 8) & 0xff, i & 0xff
    proto = "tcp" if i % 3 else "udp"
    net = 1 + (i % 4)
    extra = " --state ESTABLISHED" if proto == "tcp" else ""
    print(f"-I -s 10.{net}.{a}.{b} -d 192.0.2.{1 + i % 200} -p {proto} --sport {1024 + i % 60000}"
          f" --dport {1 + (i * 7) % 65000}{extra} -t 3600 --mark {i % 5000}")
PY
timeout 600 ip netns exec "$ns" conntrack -R "$work/batch" >/dev/null 2>&1 || true
have=$(ip netns exec "$ns" conntrack -C)
echo "entries in the table: $have"

mkdir -p "$work/empty" && chmod 755 "$work/empty"
echo "a: ALL" > "$work/rules"
echo "a: msg hello%(nl)s" > "$work/actions"
cat > "$work/nanny.conf" <<CONF
rulefile $work/rules
actionfile $work/actions
listen 4041@127.0.0.1
chrootdir $work/empty
privsepuser nobody
control $work/ctl
conntrack on
xmlrpc 127.0.0.1:8000
xmlrpcauth none
xmlrpcidle 600
CONF
chmod 644 "$work"/*
ip netns exec "$ns" "$PN" -v "$work/nanny.conf" 2>"$work/log" &
pid=$!
for _ in $(seq 100); do [ -S "$work/ctl" ] && break; sleep 0.1; done
[ -S "$work/ctl" ] || { cat "$work/log"; exit 1; }

# Interleaved (so the other load on the machine hits all three alike): each round times
# portnanny's refresh + list, its list on the snapshot, and conntrack -L | sort | head; the
# JSON lines are exactly what `nannyctl conntrack refresh` and `nannyctl conntrack list --proto
# tcp --src 10.1.0.0/16 --order dport:desc --limit 50` send.
echo
echo "page of 50: tcp, src 10.1.0.0/16, by dport descending; median of $REPS interleaved rounds"
ip netns exec "$ns" python3 - "$work/ctl" "$REPS" "$ns" <<'PY'
import json, socket, statistics, subprocess, sys, time, xmlrpc.client
path, reps, ns = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rpc = xmlrpc.client.ServerProxy("http://127.0.0.1:8000")
sid = rpc.login()
view = lambda: rpc.view(sid, {"orig_l4proto": 6, "orig_ipv4_src": "10.1.0.0/16"},
                        "orig_port_dst", "DESC", 0, 50)
query = {"filter": {"l4proto": [6], "src": ["10.1.0.0/16"]},
         "order": [{"column": "dport", "descending": True}], "limit": 50}
def ask(req):
    s = socket.socket(socket.AF_UNIX); s.settimeout(120); s.connect(path)
    s.sendall((json.dumps(req) + "\n").encode()); line = s.makefile("rb").readline(); s.close()
    return json.loads(line)
ct = ("ip netns exec %s conntrack -L -p tcp -s 10.1.0.0/16 2>/dev/null | awk '{for(i=1;i<=NF;i++) "
      "if($i ~ /^dport=/){split($i,a,\"=\"); print a[2], $0; break}}' | sort -k1,1nr | head -50" % ns)
fresh, snap, tools, xfresh, xsnap = [], [], [], [], []
ask({"conntrack": "refresh"})
for _ in range(reps):
    t = time.perf_counter(); ask({"conntrack": "refresh"}); r = ask({"conntrack": {"list": query}})
    fresh.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter(); r = ask({"conntrack": {"list": query}})
    snap.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter(); out = subprocess.run(["sh", "-c", ct], capture_output=True, timeout=300).stdout
    tools.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter(); rpc.refresh(sid); v = view()
    xfresh.append((time.perf_counter() - t) * 1000)
    t = time.perf_counter(); v = view()
    xsnap.append((time.perf_counter() - t) * 1000)
page = r["ct-page"]
ours = sorted(x["orig"]["dport"] for x in page["rows"])
theirs = sorted(int(l.split()[0]) for l in out.decode().splitlines())
m = statistics.median
print(f"{'portnanny: refresh (a new dump) + list':44} {m(fresh):8.1f} ms  ({m(fresh)/m(tools):.2f}x conntrack-tools)")
print(f"{'portnanny: list on the snapshot':44} {m(snap):8.1f} ms  ({m(snap)/m(tools):.3f}x)")
print(f"{'portnanny XML-RPC: refresh + view':44} {m(xfresh):8.1f} ms  ({m(xfresh)/m(tools):.2f}x)")
print(f"{'portnanny XML-RPC: view on the snapshot':44} {m(xsnap):8.1f} ms  ({m(xsnap)/m(tools):.3f}x)")
print(f"{'conntrack -L | sort | head -50':44} {m(tools):8.1f} ms")
print(f"rows {len(page['rows'])} of {page['total']} matching, {page['tracked']} tracked; "
      f"same dports as conntrack-tools: {ours == theirs}")
xdports = sorted(c["orig_port_dst"] for c in v["connections"])
print(f"XML-RPC: rows {len(v['connections'])} of {v['count']} matching; "
      f"same dports as conntrack-tools: {xdports == theirs}")
PY
wpid=$(pgrep -P "$pid" -f -- '--privsep-role netfilter' | head -1)
echo
echo "netfilter worker VmRSS with $have entries: $(awk '/VmRSS/{print $2, $3}' "/proc/$wpid/status")"
