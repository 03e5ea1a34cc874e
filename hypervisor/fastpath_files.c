/* Data-directory files served in the syscall hook (record side of the Linux
 * personality). Included by fastpath.c's build after it (one translation unit).
 *
 * A file-heavy program (busybox md5sum over thousands of files) makes three calls per
 * file: openat, a few reads, close. At a stop each one cost about 40 us of Python; the
 * engine itself needs a few. So the commonest case of each runs here, in C, with the
 * result, the guest memory and the SYSCALL record byte for byte what the Python
 * handlers (calls_files.py: open_path, sys_read, sys_close) and kernel.run_record
 * would give, and every other case goes to Python before any value is taken:
 *  - openat of an existing regular file of the data directory, read-only, named by
 *    a plain path (absolute, or relative to a working directory inside the data
 *    directory; no "." or ".." parts, no symbolic link on the way: openat2's
 *    RESOLVE_NO_SYMLINKS says so, where Python would follow the link itself);
 *  - read of a file C opened (up to read_max bytes): its bytes are a logged input;
 *  - close of a file C opened that Python has not taken over yet.
 * The fd table stays Python's (linux/cfiles.py): C allocates the lowest free fd of its
 * mirror, which Python keeps current, and Python takes the files C opened into its
 * table first thing whenever it runs (at the next Python hook call or stop), as it
 * takes the records. A file Python took over keeps its position here (state 3), so
 * C can go on reading it.
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define SYS_READ 0
#define SYS_CLOSE 3
#define SYS_OPENAT 257

#define CF_FREE 0
#define CF_PY 1
#define CF_C 2
#define CF_MIRROR 3
#define CF_SLOTS 1024

#define AT_FDCWD_32 0xffffff9cu
/* Open flags C serves: read-only, with any of O_NONBLOCK, O_NOCTTY, O_LARGEFILE,
 * O_CLOEXEC (they change nothing for a regular file but F_GETFL, which Python
 * answers from the flags kept). */
#define CF_FLAGS_OK (04000u | 0400u | 0100000u | 02000000u)

struct ftvm_open_how {
    uint64_t flags;
    uint64_t mode;
    uint64_t resolve;
};
#define FTVM_SYS_OPENAT2 437
#define FTVM_RESOLVE_NO_MAGICLINKS 0x02
#define FTVM_RESOLVE_NO_SYMLINKS 0x04
#define FTVM_RESOLVE_BENEATH 0x08

/* Room for a frame's fields besides a read's data (a SYSCALL record of three
 * arguments and one bin value) or an openat's path (at most 255 bytes). */
#define CF_FRAME_SLACK 96
#define CF_OPEN_FRAME_MAX (CF_FRAME_SLACK + 4 * 260)

static uint8_t *mp_str(uint8_t *p, const char *s, uint32_t n)
{
    if (n < 32) {
        *p++ = (uint8_t)(0xa0 | n);
    } else {
        *p++ = 0xd9;
        *p++ = (uint8_t)n;
    }
    memcpy(p, s, n);
    return p + n;
}

static uint8_t *mp_bin_head(uint8_t *p, uint64_t n)
{
    if (n < 256) {
        *p++ = 0xc4;
        *p++ = (uint8_t)n;
    } else if (n < 65536) {
        *p++ = 0xc5;
        *p++ = (uint8_t)(n >> 8);
        *p++ = (uint8_t)n;
    } else {
        *p++ = 0xc6;
        for (int s = 24; s >= 0; s -= 8)
            *p++ = (uint8_t)(n >> s);
    }
    return p;
}

static void frames_high_water(ftvm_cpu *c);

/* The frame around a body written at frame + 10, up to `end` (records.py's frame
 * header); past half the buffer, Python is asked to take the frames at the next stop. */
static void close_frame(ftvm_cpu *c, uint8_t *frame, uint8_t *end)
{
    uint32_t len = (uint32_t)(end - (frame + 10));
    frame[0] = FRAME_VERSION;
    frame[1] = KIND_SYSCALL;
    put_le32(frame + 2, len);
    put_le32(frame + 6, crc32_update(crc32_update(0, frame, 6), frame + 10, len));
    c->sys_frames_len += 10 + len;
    c->sys_frames_count++;
    frames_high_water(c);
}

/* [blocks, pc, nr, [args]] : the body's start, as records.py writes it. */
static uint8_t *body_head(ftvm_cpu *c, uint8_t *p, uint64_t pc, uint64_t nr, const uint64_t *a, int nargs)
{
    *p++ = 0x97;
    p = mp_uint(p, c->blocks);
    p = mp_uint(p, pc);
    p = mp_uint(p, nr);
    *p++ = (uint8_t)(0x90 | nargs);
    for (int i = 0; i < nargs; i++)
        p = mp_uint(p, a[i]);
    return p;
}

static uint32_t frames_room(const ftvm_cpu *c) { return c->sys_frames_cap - c->sys_frames_len; }

/* Python drains the frames at a stop: ask for one well before the buffer fills. */
static void frames_high_water(ftvm_cpu *c)
{
    if (c->sys_frames_len > c->sys_frames_cap / 2)
        ftvm_request(c, SYNC_HYPERCALL);
}

/* The guest's path at `addr`: printable ASCII, at most 255 bytes (others: Python). */
static int guest_path(uc_engine *uc, uint64_t addr, char *out, uint32_t *len)
{
    uint32_t n = 0;
    if (!addr)
        return 0;
    while (n < 256) {
        uint32_t chunk = 4096 - (uint32_t)(addr & 0xfff);
        if (chunk > 256 - n)
            chunk = 256 - n;
        if (uc_mem_read(uc, addr, out + n, chunk) != UC_ERR_OK)
            return 0;
        for (uint32_t i = 0; i < chunk; i++) {
            char ch = out[n + i];
            if (ch == 0) {
                *len = n + i;
                return n + i > 0;
            }
            if (ch < 0x20 || ch > 0x7e)
                return 0;
        }
        n += chunk;
        addr += chunk;
    }
    return 0;
}

/* Every part of `p` (length n) a name: no empty part (a doubled or trailing slash,
 * except the leading one), no "." or "..". */
static int plain_path(const char *p, uint32_t n)
{
    uint32_t i = p[0] == '/' ? 1 : 0;
    if (i >= n)
        return 0;
    while (i < n) {
        uint32_t j = i;
        while (j < n && p[j] != '/')
            j++;
        uint32_t len = j - i;
        if (len == 0 || (len == 1 && p[i] == '.') || (len == 2 && p[i] == '.' && p[i + 1] == '.'))
            return 0;
        if (j == n)
            return 1;
        i = j + 1;
        if (i == n)
            return 0; /* trailing slash */
    }
    return 1;
}

static int files_openat(uc_engine *uc, ftvm_cpu *c, ftvm_files *fs, uint64_t rip)
{
    const uint64_t *a = c->sys_regs + 1;
    char path[256], g[520];
    uint32_t n = 0, gn;
    uint32_t flags = (uint32_t)a[2];
    if (fs->data_dirfd < 0 || (flags & 3) || (flags & ~CF_FLAGS_OK) || frames_room(c) < CF_OPEN_FRAME_MAX)
        return 0;
    if (!guest_path(uc, a[1], path, &n) || !plain_path(path, n))
        return 0;
    if (path[0] == '/') {
        memcpy(g, path, n);
        gn = n;
    } else {
        if ((uint32_t)a[0] != AT_FDCWD_32 || !fs->cwd_len)
            return 0;
        gn = fs->cwd_len;
        memcpy(g, fs->cwd, gn);
        if (!(gn == 1 && g[0] == '/'))
            g[gn++] = '/';
        memcpy(g + gn, path, n);
        gn += n;
    }
    uint32_t dn = fs->data_guest_len;
    if (gn <= dn + 1 || gn > 255 || memcmp(g, fs->data_guest, dn) != 0 || g[dn] != '/')
        return 0;
    g[gn] = 0;
    int fd = -1;
    for (int i = 0; i < CF_SLOTS; i++) {
        if (fs->fd[i].state == CF_FREE) {
            fd = i;
            break;
        }
    }
    if (fd < 0)
        return 0;
    /* Python opens the host path, which with no link on the way is this file. */
    struct ftvm_open_how how = {O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY, 0,
                                FTVM_RESOLVE_NO_SYMLINKS | FTVM_RESOLVE_BENEATH | FTVM_RESOLVE_NO_MAGICLINKS};
    int h = (int)syscall(FTVM_SYS_OPENAT2, fs->data_dirfd, g + dn + 1, &how, sizeof how);
    if (h < 0)
        return 0; /* an error, a link, or no openat2: Python does it */
    struct stat sb;
    if (fstat(h, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(h);
        return 0;
    }
    ftvm_cfile *f = &fs->fd[fd];
    f->state = CF_C;
    f->hostfd = h;
    f->flags = flags;
    f->pos = 0;
    memcpy(f->path, g, gn + 1);
    f->path_len = gn;
    fs->fresh++;
    sys_return(uc, (uint64_t)fd, rip + 2);

    /* [blocks, pc, 257, [dirfd, path, flags, mode], fd, [[0, 0]], [[i, path]...]]:
     * the host's answer to the open is [0, not a directory]; the path is shown for
     * each argument that is its address, as kernel.run_record lists them. */
    uint8_t *frame = c->sys_frames + c->sys_frames_len, *p = body_head(c, frame + 10, rip, SYS_OPENAT, a, 4);
    p = mp_uint(p, (uint64_t)fd);
    *p++ = 0x91;
    *p++ = 0x92;
    *p++ = 0x00;
    *p++ = 0x00;
    int ns = 0;
    for (int i = 0; i < 4; i++)
        ns += a[i] == a[1];
    *p++ = (uint8_t)(0x90 | ns);
    for (int i = 0; i < 4; i++) {
        if (a[i] == a[1]) {
            *p++ = 0x92;
            *p++ = (uint8_t)i;
            p = mp_str(p, path, n);
        }
    }
    close_frame(c, frame, p);
    return 1;
}

static int files_read(uc_engine *uc, ftvm_cpu *c, ftvm_files *fs, uint64_t rip)
{
    const uint64_t *a = c->sys_regs + 1;
    uint32_t fd = (uint32_t)a[0];
    uint64_t want = a[2];
    if (fd >= CF_SLOTS || (a[0] >> 32))
        return 0;
    ftvm_cfile *f = &fs->fd[fd];
    if ((f->state != CF_C && f->state != CF_MIRROR) || f->hostfd < 0 || want == 0 || want > fs->read_max
        || frames_room(c) < want + CF_FRAME_SLACK)
        return 0;
    /* The data lands where it will sit in the frame once the head is known. */
    uint8_t *frame = c->sys_frames + c->sys_frames_len, *data = frame + CF_FRAME_SLACK;
    ssize_t got = pread(f->hostfd, data, want, (off_t)f->pos);
    if (got < 0)
        return 0; /* Python logs the error */
    if (got > 0 && uc_mem_write(uc, a[1], data, (size_t)got) != UC_ERR_OK)
        return 0; /* Python says EFAULT */
    f->pos += (uint64_t)got;
    sys_return(uc, (uint64_t)got, rip + 2);

    /* [blocks, pc, 0, [fd, buf, size], n, [bytes], []] */
    uint8_t *p = body_head(c, frame + 10, rip, SYS_READ, a, 3);
    p = mp_uint(p, (uint64_t)got);
    *p++ = 0x91;
    p = mp_bin_head(p, (uint64_t)got);
    memmove(p, data, (size_t)got);
    p += got;
    *p++ = 0x90;
    close_frame(c, frame, p);
    return 1;
}

static int files_close(uc_engine *uc, ftvm_cpu *c, ftvm_files *fs, uint64_t rip)
{
    const uint64_t *a = c->sys_regs + 1;
    uint32_t fd = (uint32_t)a[0];
    if (fd >= CF_SLOTS || (a[0] >> 32) || fs->fd[fd].state != CF_C || frames_room(c) < CF_FRAME_SLACK)
        return 0;
    ftvm_cfile *f = &fs->fd[fd];
    close(f->hostfd);
    f->hostfd = -1;
    f->state = CF_FREE;
    fs->fresh--;
    sys_return(uc, 0, rip + 2);
    /* [blocks, pc, 3, [fd], 0, [], []] */
    uint8_t *frame = c->sys_frames + c->sys_frames_len, *p = body_head(c, frame + 10, rip, SYS_CLOSE, a, 1);
    *p++ = 0x00;
    *p++ = 0x90;
    *p++ = 0x90;
    close_frame(c, frame, p);
    return 1;
}

/* Called by the syscall hook when recording: 1 if the call ran here. Like the clock
 * reads, nothing runs here while RDTSC results wait to be logged (they come first). */
static int files_call(uc_engine *uc, ftvm_cpu *c, uint64_t nr, uint64_t rip)
{
    ftvm_files *fs = c->sys_fs;
    if (c->tsc_len || !c->sys_frames)
        return 0;
    if (nr == SYS_READ)
        return files_read(uc, c, fs, rip);
    if (nr == SYS_OPENAT)
        return files_openat(uc, c, fs, rip);
    if (nr == SYS_CLOSE)
        return files_close(uc, c, fs, rip);
    return 0;
}
