"""One home per source of nondeterminism, each with its record side and its replay
side next to each other (as QEMU's replay/ does):

- vtime: RDTSC/RDTSCP and the clock system calls (TSC records; C does the hot part),
- rng: the random-number device (RNG records),
- interrupts: the input device (INPUT), interrupt delivery (IRQ), the timer,
- net: the network device's events from the front end (NET),
- disk: block requests and their completions (DISK).

The Linux personality's families (system calls, data-directory changes, blocking
waits, signals, thread switches) have theirs in hypervisor/linux/ (replay_sides.py
names them). record.py and replay.py are the loops: at each stop the recorder asks
each source what arrived and logs it at that execution point; the replayer applies
each point record through one table by kind (Replayer._sides).
"""
