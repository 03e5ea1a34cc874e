#!/usr/bin/env bash
# The main demo: record guests, inspect the logs, replay them bit for bit.
set -euo pipefail
cd "$(dirname "$0")/.."
FTVM=.venv/bin/ftvm
G=guest_programs/build
OUT=$(mktemp -d /tmp/ftvm-demo.XXXXXX)
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Record the echo guest; its input arrives as asynchronous interrupts"
printf 'hello\nfault tolerance\n' | $FTVM record $G/echo.elf -o "$OUT/echo.ftlog"
step "Inspect the log: one line per record, with the instruction at each event's PC"
$FTVM log show "$OUT/echo.ftlog"
step "Replay it offline: same output, checked against the log as it goes"
$FTVM replay "$OUT/echo.ftlog"
step "Record the clock guest (RDTSC is virtual time, logged) and the ticker (timer interrupts)"
$FTVM record $G/clock.elf -o "$OUT/clock.ftlog" </dev/null
$FTVM record $G/ticker.elf -o "$OUT/ticker.ftlog" </dev/null
step "Replay both: identical results, although time and interrupts came from the host"
$FTVM replay "$OUT/clock.ftlog"
$FTVM replay "$OUT/ticker.ftlog"
$FTVM log stats "$OUT/ticker.ftlog"
step "A guest fault is logged and replays identically (exit status 139)"
$FTVM record $G/fault.elf -o "$OUT/fault.ftlog" </dev/null || echo "(exit status $?)"
$FTVM replay "$OUT/fault.ftlog" || echo "(exit status $?)"
step "Fault tolerance: primary and backup processes; kill the primary after 1 s"
$FTVM run $G/lines.elf --kill-primary-after 1.0 --log "$OUT/whole.ftlog" > "$OUT/observer.out"
echo "observer printed $(wc -l < "$OUT/observer.out") lines; first and last:"
head -1 "$OUT/observer.out"; tail -1 "$OUT/observer.out"
step "The whole-run log (across the failover) replays to exactly what the observer printed"
$FTVM replay -q "$OUT/whole.ftlog" | cmp - "$OUT/observer.out" && echo "identical: $(wc -c < "$OUT/observer.out") bytes"
$FTVM log show "$OUT/whole.ftlog" --kind golive
step "Three nodes and the view service: two primaries killed, redundancy restored by state transfer"
$FTVM run $G/lines_long.elf --nodes 3 --kill-primary-after 1.5 --kill-primary-after 4 \
    --log "$OUT/three.ftlog" --run-dir "$OUT/three" > "$OUT/three.out"
echo "observer printed $(wc -l < "$OUT/three.out") lines"
$FTVM log show "$OUT/three.ftlog" --kind view --kind transfer --kind golive
$FTVM status --run-dir "$OUT/three" | tail -8
step "A replicated service: the kv guest speaks Redis, keeps its data on a disk, and serves through a primary kill"
PORT=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
$FTVM run $G/kv.elf --listen 127.0.0.1:$PORT --disk "$OUT/kv.img" --disk-size 64M \
    --run-dir "$OUT/kv" --log "$OUT/kv.ftlog" > "$OUT/kv.out" 2> "$OUT/kv.err" &
KV=$!
until redis-cli -p $PORT PING >/dev/null 2>&1; do sleep 0.2; done
redis-cli -p $PORT SET greeting "hello from a fault-tolerant VM"
redis-benchmark -p $PORT -c 50 -n 20000 -t set,get,incr -q &
BENCH=$!
sleep 1.5
$FTVM kill primary --run-dir "$OUT/kv"
wait $BENCH
grep -h "failover" "$OUT/kv.err" || true
echo "after the failover: GET greeting = $(redis-cli -p $PORT GET greeting); DBSIZE = $(redis-cli -p $PORT DBSIZE)"
kill -TERM $KV; wait $KV || true
step "Full restart on the same disk: the data is still there"
$FTVM run $G/kv.elf --listen 127.0.0.1:$PORT --disk "$OUT/kv.img" --run-dir "$OUT/kv2" > "$OUT/kv2.out" 2>/dev/null &
KV=$!
until redis-cli -p $PORT PING >/dev/null 2>&1; do sleep 0.2; done
head -1 "$OUT/kv2.out"
echo "GET greeting = $(redis-cli -p $PORT GET greeting)"
kill -TERM $KV; wait $KV || true
step "The whole service run replays offline, network traffic and disk included"
$FTVM replay -q "$OUT/kv.ftlog" > "$OUT/kv.replay" || test $? = 130   # 130: the run was stopped, as recorded
cmp "$OUT/kv.replay" "$OUT/kv.out" && echo "replay complete: identical console output ($(wc -l < "$OUT/kv.out") lines)"
$FTVM log stats "$OUT/kv.ftlog"

step "Done. Logs are in $OUT"
