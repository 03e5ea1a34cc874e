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
step "Done. Logs are in $OUT"
