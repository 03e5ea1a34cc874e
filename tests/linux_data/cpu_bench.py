"""A CPU-bound python3 program for `ftvm bench` (about 1-2 s natively): pure-Python
loops, integer arithmetic, dicts and strings. Prints a deterministic result.
Optional argv[1]: a scale factor (default 1; 0.25 runs about a quarter as long).
Measured here: 1.3 s natively, 9.3 s under qemu-x86_64."""
import sys


def lcg(seed):
    while True:
        seed = (seed * 6364136223846793005 + 1442695040888963407) & (2 ** 64 - 1)
        yield seed >> 33


def primes(limit):
    sieve = bytearray([1]) * (limit + 1)
    sieve[0:2] = b"\0\0"
    for i in range(2, int(limit ** 0.5) + 1):
        if sieve[i]:
            for j in range(i * i, limit + 1, i):   # a Python loop on purpose
                sieve[j] = 0
    return sum(sieve)


def words(n):
    rnd = lcg(7)
    letters = "abcdefghij"
    counts = {}
    for _ in range(n):
        r = next(rnd)
        w = "".join(letters[(r >> (4 * k)) % 10] for k in range(3))
        counts[w] = counts.get(w, 0) + 1
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    return len(counts), top


def collatz(limit):
    best, best_n = 0, 0
    for n in range(1, limit):
        steps, x = 0, n
        while x != 1:
            x = x // 2 if x % 2 == 0 else 3 * x + 1
            steps += 1
        if steps > best:
            best, best_n = steps, n
    return best_n, best


def main():
    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    print(f"primes below {int(1000000 * scale)}: {primes(int(1000000 * scale))}")
    distinct, top = words(int(500000 * scale))
    print(f"words: {distinct} distinct, top {top}")
    n, steps = collatz(int(250000 * scale))
    print(f"collatz below {int(250000 * scale)}: longest from {n}, {steps} steps")


if __name__ == "__main__":
    main()
