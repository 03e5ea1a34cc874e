"""One module per source of nondeterminism, each with its record side and its replay
side next to each other (as QEMU's replay/ does): vtime (RDTSC/RDTSCP), rng (the
random-number device), interrupts (the input device, the timer, interrupt delivery)."""
