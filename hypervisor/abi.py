"""Guest ABI v1 constants. The C side of these is guest_programs/ftvm.h; the prose is
docs/guest-abi.md. Any change here is an ABI change: bump ABI_VERSION."""

ABI_VERSION = 2            # v2 = v1 + the network device (0x550-0x553) and the disk (0x560-0x561)
ABI_READABLE = (1, 2)      # logs made under these replay here

PORT_CONSOLE = 0xE9
PORT_EXIT = 0x501
PORT_IRQ_HANDLER = 0x510
PORT_IRQ_RETURN = 0x511
PORT_TIMER = 0x520
PORT_INPUT_STATUS = 0x530
PORT_INPUT_DATA = 0x531
PORT_RNG = 0x540
PORT_NET_RECV = 0x550
PORT_NET_SEND = 0x551
PORT_NET_CLOSE = 0x552
PORT_NET_STATUS = 0x553
PORT_DISK_SECTORS = 0x560
PORT_DISK_SUBMIT = 0x561

IRQ_TIMER = 0
IRQ_INPUT = 1
IRQ_NET = 2
IRQ_DISK = 3
IRQ_NAMES = {IRQ_TIMER: "timer", IRQ_INPUT: "input", IRQ_NET: "net", IRQ_DISK: "disk"}

NET_NONE, NET_OPEN, NET_DATA, NET_CLOSE, NET_RESET = range(5)
NET_TYPE_NAMES = {NET_OPEN: "open", NET_DATA: "data", NET_CLOSE: "close", NET_RESET: "reset"}

DISK_SECTOR = 4096
DISK_MAX_SECTORS = 256
DISK_MAX_INFLIGHT = 64
DISK_READ, DISK_WRITE = 1, 2
DISK_PENDING = 0xFFFF_FFFF
DISK_OK, DISK_EIO, DISK_ENOSPC, DISK_EINVAL, DISK_EBUSY = range(5)
DISK_STATUS_NAMES = {DISK_OK: "ok", DISK_EIO: "I/O error", DISK_ENOSPC: "no space",
                     DISK_EINVAL: "invalid request", DISK_EBUSY: "busy"}

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
