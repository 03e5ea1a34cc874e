"""Busybox applets with real input, for comparing an emulated run with a native one.

Each case is (argv, stdin_file_or_None). In argv and the stdin name, "{data}" stands
for this directory (tests/linux_data); resolve it with `cases()`. argv[0] is the applet:
run it as `busybox APPLET ARGS...` (Debian's busybox-static is /bin/busybox). Every case
is deterministic natively: no times, sizes on disk, owners or randomness in the output.
"""
import os
import subprocess

DATA = os.path.dirname(os.path.abspath(__file__))
BUSYBOX = "/bin/busybox"

CASES = [
    (["cat", "{data}/text.txt"], None),
    (["cat"], "{data}/data.csv"),
    (["wc", "{data}/text.txt", "{data}/data.csv"], None),
    (["wc", "-l"], "{data}/words.txt"),
    (["sort", "{data}/text.txt"], None),
    (["sort", "-t", ",", "-k", "4", "-n", "{data}/data.csv"], None),
    (["uniq", "-c", "{data}/words.txt"], None),
    (["head", "-n", "15", "{data}/text.txt"], None),
    (["tail", "-n", "7", "{data}/data.csv"], None),
    (["grep", "-n", "-i", "FERRY", "{data}/text.txt"], None),
    (["grep", "-c", "Oslo"], "{data}/data.csv"),
    (["sed", "-n", "s/^Day \\([0-9]*\\): \\([A-Za-z-]*\\).*/\\2 on day \\1/p", "{data}/text.txt"], None),
    (["awk", "-F,", "NR > 1 { s[$3] += $4 } END { for (c in s) printf \"%s %.2f\\n\", c, s[c] }",
      "{data}/data.csv"], None),
    (["md5sum", "{data}/text.txt", "{data}/data.csv", "{data}/words.txt"], None),
    (["sha256sum", "{data}/text.txt"], None),
    (["cut", "-d", ",", "-f", "2,3", "{data}/data.csv"], None),
    (["tr", "a-z", "A-Z"], "{data}/words.txt"),
    (["od", "-A", "x", "-t", "x1", "-c", "-N", "48", "{data}/text.txt"], None),
    (["ls", "{data}/tree"], None),
    (["expr", "6", "*", "7"], None),
    (["expr", "length", "fault tolerance"], None),
    (["seq", "1", "3", "40"], None),
    (["printf", "%05d|%-6s|%x|%s\\n", "42", "ab", "255", "end"], None),
    (["basename", "/usr/lib/x86_64-linux-gnu/libc.so.6", ".6"], None),
]


def cases(data=DATA):
    """The cases with "{data}" replaced: a list of (argv without "busybox", stdin path or None)."""
    return [([a.replace("{data}", data) for a in argv], stdin and stdin.replace("{data}", data))
            for argv, stdin in CASES]


def run_native(argv, stdin=None, busybox=BUSYBOX):
    """Runs one case natively; returns (exit status, stdout bytes)."""
    with open(stdin, "rb") if stdin else open(os.devnull, "rb") as f:
        p = subprocess.run([busybox] + argv, stdin=f, stdout=subprocess.PIPE, env={"LC_ALL": "C"})
    return p.returncode, p.stdout


if __name__ == "__main__":
    for argv, stdin in cases():
        status, out = run_native(argv, stdin)
        print(f"{' '.join(argv)}{' < ' + stdin if stdin else ''}: exit {status}, {len(out)} bytes")
