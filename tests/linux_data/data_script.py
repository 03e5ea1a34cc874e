"""A python3 program for ftvm's Linux personality: files in the data directory given as
argv[1], time, randomness and JSON. Lines that differ from run to run start with
"nondet:". Leaves DIR/pydata/ with the same contents on every run (tests compare it).
"""
import hashlib
import json
import os
import sys
import tempfile
import time


def main():
    if len(sys.argv) != 2:
        print("usage: data_script.py DIR", file=sys.stderr)
        return 2
    work = os.path.join(sys.argv[1], "pydata")
    os.makedirs(work, exist_ok=True)
    for name in os.listdir(work):           # leftovers of an earlier run
        os.unlink(os.path.join(work, name))

    # Write, read back, append.
    notes = os.path.join(work, "notes.txt")
    with open(notes, "w") as f:
        for i in range(1, 6):
            f.write(f"line {i}: {'*' * i}\n")
    with open(notes) as f:
        lines = f.read().splitlines()
    print(f"wrote and read back {len(lines)} lines; last: {lines[-1]}")
    with open(notes, "a") as f:
        f.write("appended line\n")
        f.flush()
        os.fsync(f.fileno())
    with open(notes, "rb") as f:
        data = f.read()
    print(f"after append: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}")

    # Binary data, seek and a partial read.
    blob = bytes(range(256)) * 64
    path = os.path.join(work, "blob.bin")
    with open(path, "wb") as f:
        f.write(blob)
    with open(path, "rb") as f:
        f.seek(1000)
        part = f.read(16)
    print(f"blob: {os.path.getsize(path)} bytes; at 1000: {part.hex()}")

    # JSON round trip.
    record = {"name": "ftvm", "nodes": [1, 2, 3], "ratio": 2.5, "ok": True, "none": None,
              "text": "caf\u00e9 \u2713"}
    jpath = os.path.join(work, "record.json")
    with open(jpath, "w", encoding="utf-8") as f:
        json.dump(record, f, sort_keys=True, ensure_ascii=False)
    with open(jpath, encoding="utf-8") as f:
        back = json.load(f)
    print(f"json round trip equal: {back == record}; keys: {','.join(sorted(back))}")

    # Rename, a file in /tmp, listing.
    os.rename(path, os.path.join(work, "blob-renamed.bin"))
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "scratch"), "w") as f:
            f.write("scratch\n")
        print(f"temporary directory listing: {os.listdir(tmp)}")
    print(f"data directory listing: {sorted(os.listdir(work))}")

    # Time and randomness: only plausibility is deterministic.
    t0 = time.time()
    m0 = time.monotonic()
    time.sleep(0.01)
    print(f"time.time() after 2020: {t0 > 1.6e9}")
    print(f"monotonic advanced over a 10 ms sleep: {time.monotonic() - m0 >= 0.01}")
    rnd = os.urandom(32)
    print(f"os.urandom gave {len(rnd)} bytes")
    print(f"nondet: time {t0:.6f} sha256(urandom) {hashlib.sha256(rnd).hexdigest()}")

    # Summary of what is on disk.
    summary = []
    for name in sorted(os.listdir(work)):
        with open(os.path.join(work, name), "rb") as f:
            summary.append(f"{name}:{hashlib.md5(f.read()).hexdigest()[:8]}")
    print("summary: " + " ".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
