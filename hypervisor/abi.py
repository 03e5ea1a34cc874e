"""Guest ABI v1 constants. The C side of these is guest_programs/ftvm.h; the prose is
docs/guest-abi.md. Any change here is an ABI change: bump ABI_VERSION."""

ABI_VERSION = 1

PORT_CONSOLE = 0xE9
PORT_EXIT = 0x501
PORT_IRQ_HANDLER = 0x510
PORT_IRQ_RETURN = 0x511
PORT_TIMER = 0x520
PORT_INPUT_STATUS = 0x530
PORT_INPUT_DATA = 0x531
PORT_RNG = 0x540

IRQ_TIMER = 0
IRQ_INPUT = 1
IRQ_NAMES = {IRQ_TIMER: "timer", IRQ_INPUT: "input"}

INPUT_EOF_BIT = 0x8000_0000
INPUT_NONE = 0xFFFF_FFFF

RFLAGS_IF = 0x200

# Memory layout. The stack sits far above anything a static ELF links at.
PAGE = 0x1000
STACK_TOP = 0x7FF0_0000_0000
STACK_SIZE_DEFAULT = 1 << 20
STACK_SIZE_MIN = 1 << 20
MEM_LIMIT_DEFAULT = 1 << 30
# The red zone below RSP that an interrupt must not clobber (System V ABI).
RED_ZONE = 128
# Shortest timer period the hypervisor honours, in microseconds.
TIMER_PERIOD_MIN_US = 100
