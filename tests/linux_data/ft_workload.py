"""A python3 workload for fault-tolerance tests: N numbered lines, each printed and
appended to DIR/lines.txt, and a counter file replaced through rename at every step
(write a temporary file, fsync, rename over the old one), with some CPU work between.
Its output and its files are the same on every run: a run with primary kills must
leave exactly what a run without them leaves. An optional third argument paces it: a
sleep of that many ms after each line (guest time), so that a kill timed from its
output lands while it runs, however fast the engine is."""
import hashlib
import os
import sys
import time


def main():
    d, n = sys.argv[1], int(sys.argv[2])
    pace = int(sys.argv[3]) / 1000 if len(sys.argv) > 3 else 0
    os.makedirs(d, exist_ok=True)
    h = hashlib.sha256()
    with open(os.path.join(d, "lines.txt"), "w") as f:
        for i in range(n):
            line = f"line {i} {h.hexdigest()[:12]}\n"
            h.update(line.encode())
            f.write(line)
            f.flush()
            if i % 10 == 0:
                tmp = os.path.join(d, "counter.tmp")
                with open(tmp, "w") as c:
                    c.write(f"{i}\n")
                    c.flush()
                    os.fsync(c.fileno())
                os.rename(tmp, os.path.join(d, "counter"))
            print(line, end="", flush=True)
            sum(j * j for j in range(2000))
            if pace:
                time.sleep(pace)
    print(f"done {h.hexdigest()}")


main()
