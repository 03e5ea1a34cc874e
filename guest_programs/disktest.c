/* disktest: exercises the disk device (guest ABI v2) for the hypervisor's tests.
 *
 *   no disk                      -> "disktest: no disk", exit 3
 *   writes sectors 0..N-1 (N = 16, or fewer on a tiny disk) with a pattern made from
 *   a random seed, reads them back into another buffer and compares
 *                                -> "disktest: ok N sectors crc=XXXXXXXX", the CRC-32
 *                                   of the data read
 *   reads them again into a buffer the CPU keeps writing while the read is in flight:
 *   the data lands at completion, so the result is the disk's data again
 *                                -> "disktest: dma crc=XXXXXXXX" (equal to the above)
 *   a request past the end of the disk
 *                                -> "disktest: out-of-range request status 3" (EINVAL)
 *   a request that completes with an error -> "disktest: write error status S at lba L"
 *   (or "read error ..."), exit 4; a mismatch -> "disktest: mismatch ...", exit 5.
 * Completions are awaited with the interrupt and `sti; hlt`, not by spinning. */
#include "ftvm.h"

#define NSEC 16
static uint8_t wbuf[NSEC * FTVM_DISK_SECTOR] __attribute__((aligned(4096)));
static uint8_t rbuf[NSEC * FTVM_DISK_SECTOR] __attribute__((aligned(4096)));
static uint8_t bbuf[NSEC * FTVM_DISK_SECTOR] __attribute__((aligned(4096)));
static struct ftvm_disk_req req;
static volatile uint32_t disk_irqs;

static void on_irq(unsigned vector)
{
    if (vector == FTVM_IRQ_DISK)
        disk_irqs++;
}

static uint32_t crc32(const uint8_t *p, uint32_t n)
{
    static uint32_t tab[256];
    if (!tab[1])
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            tab[i] = c;
        }
    uint32_t c = 0xFFFFFFFFu;
    while (n--)
        c = tab[(c ^ *p++) & 0xff] ^ (c >> 8);
    return ~c;
}

static void put_hex8(uint32_t v)
{
    char b[9];
    for (int i = 7; i >= 0; i--) {
        b[i] = "0123456789abcdef"[v & 15];
        v >>= 4;
    }
    b[8] = 0;
    ftvm_puts(b);
}

static void submit(uint32_t op, uint64_t lba, uint32_t count, void *buf)
{
    req.op = op;
    req.count = count;
    req.lba = lba;
    req.buf = (uint64_t)(uintptr_t)buf;
    req.tag = 0;
    ftvm_disk_submit(&req);
}

static void wait_done(void)
{
    ftvm_irq_disable();
    while (req.status == FTVM_DISK_PENDING) {
        ftvm_wait_irq();
        ftvm_irq_disable();
    }
    ftvm_irq_enable();
}

static void check(const char *what)
{
    if (req.status == FTVM_DISK_OK)
        return;
    ftvm_puts("disktest: ");
    ftvm_puts(what);
    ftvm_puts(" error status ");
    ftvm_put_u64(req.status);
    ftvm_puts(" at lba ");
    ftvm_put_u64(req.lba);
    ftvm_puts("\n");
    ftvm_exit(4);
}

static void io(uint32_t op, uint64_t lba, uint32_t count, void *buf)
{
    submit(op, lba, count, buf);
    wait_done();
    check(op == FTVM_DISK_WRITE ? "write" : "read");
}

int main(void)
{
    ftvm_set_irq_handler(on_irq);
    uint32_t sectors = ftvm_disk_sectors();
    if (!sectors) {
        ftvm_puts("disktest: no disk\n");
        return 3;
    }
    uint32_t n = sectors < NSEC ? sectors : NSEC;
    uint32_t bytes = n * FTVM_DISK_SECTOR;
    uint32_t seed = ftvm_rng32();
    ftvm_puts("disktest: ");
    ftvm_put_u64(sectors);
    ftvm_puts(" sectors, seed ");
    put_hex8(seed);
    ftvm_puts("\n");

    for (uint32_t i = 0; i < bytes / 4; i++) {
        uint32_t x = seed ^ (i * 0x9E3779B1u);
        x ^= x >> 16;
        x *= 0x85EBCA6Bu;
        x ^= x >> 13;
        __builtin_memcpy(wbuf + 4 * i, &x, 4);
    }
    /* one request per 8 sectors, then the rest: several writes in flight at once */
    uint32_t first = n > 8 ? 8 : n;
    io(FTVM_DISK_WRITE, 0, first, wbuf);
    if (n > first)
        io(FTVM_DISK_WRITE, first, n - first, wbuf + first * FTVM_DISK_SECTOR);

    memset(rbuf, 0xA5, bytes);
    io(FTVM_DISK_READ, 0, n, rbuf);
    for (uint32_t i = 0; i < bytes; i++)
        if (rbuf[i] != wbuf[i]) {
            ftvm_puts("disktest: mismatch at byte ");
            ftvm_put_u64(i);
            ftvm_puts("\n");
            return 5;
        }
    uint32_t crc = crc32(rbuf, bytes);
    ftvm_puts("disktest: ok ");
    ftvm_put_u64(n);
    ftvm_puts(" sectors crc=");
    put_hex8(crc);
    ftvm_puts("\n");

    /* DMA at completion: scribble over the buffer while the read is in flight, and
     * stop as soon as the request completes. What remains is the disk's data. */
    memset(bbuf, 0, bytes);
    submit(FTVM_DISK_READ, 0, n, bbuf);
    for (uint32_t pass = 0; pass < 4 && req.status == FTVM_DISK_PENDING; pass++)
        for (uint32_t i = 0; i < bytes && req.status == FTVM_DISK_PENDING; i += 64)
            bbuf[i] = (uint8_t)(0x5A + pass);
    wait_done();
    check("read");
    uint32_t dcrc = crc32(bbuf, bytes);
    ftvm_puts("disktest: dma crc=");
    put_hex8(dcrc);
    ftvm_puts(dcrc == crc ? "\n" : " (differs from the data read before)\n");

    /* a request past the end of the disk completes at once with EINVAL */
    submit(FTVM_DISK_READ, sectors, 1, rbuf);
    wait_done();
    ftvm_puts("disktest: out-of-range request status ");
    ftvm_put_u64(req.status);
    ftvm_puts("\n");
    ftvm_puts("disktest: done\n");
    return 0;
}
