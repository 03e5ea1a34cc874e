/* mmapper: anonymous mappings (mmap, mprotect, mremap, munmap), the heap through
 * malloc of many sizes, and file mappings (private read-only, and shared read-write
 * with msync) of files in the directory given as argv[1]. Prints checksums; exits with
 * status 6. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#include "common.h"

#define MiB (1024 * 1024)

static void fill(unsigned char *p, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        p[i] = seed >> 16;
    }
}

static void anonymous(void)
{
    unsigned char *p = mmap(NULL, MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(p != MAP_FAILED, "mmap anonymous");
    printf("fresh anonymous memory is zero: %s\n", p[0] == 0 && p[MiB - 1] == 0 ? "yes" : "no");
    fill(p, MiB, 1);
    uint32_t crc = crc32_update(0, p, MiB);
    printf("anonymous 1 MiB crc32: %08x\n", crc);

    CHECK(mprotect(p, MiB, PROT_READ) == 0, "mprotect read-only");
    printf("crc32 while read-only: %08x\n", crc32_update(0, p, MiB));
    CHECK(mprotect(p, MiB, PROT_READ | PROT_WRITE) == 0, "mprotect read-write");
    p[0] ^= 0xff;
    p[0] ^= 0xff;

    unsigned char *q = mremap(p, MiB, 4 * MiB, MREMAP_MAYMOVE);
    CHECK(q != MAP_FAILED, "mremap grow");
    printf("first MiB kept by mremap: %s\n", crc32_update(0, q, MiB) == crc ? "yes" : "no");
    printf("grown part is zero: %s\n", q[MiB] == 0 && q[4 * MiB - 1] == 0 ? "yes" : "no");
    fill(q + MiB, 3 * MiB, 2);
    printf("anonymous 4 MiB crc32: %08x\n", crc32_update(0, q, 4 * MiB));
    q = mremap(q, 4 * MiB, 2 * MiB, 0);
    CHECK(q != MAP_FAILED, "mremap shrink");
    printf("after shrinking to 2 MiB crc32: %08x\n", crc32_update(0, q, 2 * MiB));
    CHECK(munmap(q, 2 * MiB) == 0, "munmap");

    /* A hole punched in the middle of a mapping. */
    p = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(p != MAP_FAILED, "mmap 3 pages");
    memset(p, 'x', 3 * 4096);
    CHECK(munmap(p + 4096, 4096) == 0, "munmap middle page");
    printf("pages around the hole: %c %c\n", p[0], p[2 * 4096]);
    munmap(p, 4096);
    munmap(p + 2 * 4096, 4096);
}

static void heap(void)
{
    enum { N = 3000 };
    static unsigned char *blocks[N];
    uint32_t crc = 0;
    for (int i = 0; i < N; i++) {
        size_t size = (size_t)(i * 7919) % 5000 + 1;
        if (i % 500 == 0)
            size = 300 * 1024;      /* large enough for glibc to use mmap */
        blocks[i] = malloc(size);
        CHECK(blocks[i], "malloc");
        fill(blocks[i], size, i);
        crc = crc32_update(crc, blocks[i], size);
        if (i % 3 == 0) {       /* free some as we go, so that blocks are reused */
            free(blocks[i]);
            blocks[i] = NULL;
        }
    }
    for (int i = 0; i < N; i++)
        free(blocks[i]);
    printf("heap: %d blocks, crc32 %08x\n", N, crc);
}

static void files(void)
{
    static unsigned char data[10000];
    fill(data, sizeof data, 3);
    int fd = open("mmapper_private.bin", O_CREAT | O_RDWR | O_TRUNC, 0644);
    CHECK(fd >= 0, "create mmapper_private.bin");
    CHECK(write(fd, data, sizeof data) == sizeof data, "write mmapper_private.bin");
    close(fd);

    fd = open("mmapper_private.bin", O_RDONLY);
    CHECK(fd >= 0, "open mmapper_private.bin");
    unsigned char *p = mmap(NULL, sizeof data, PROT_READ, MAP_PRIVATE, fd, 0);
    CHECK(p != MAP_FAILED, "mmap file private");
    close(fd);
    printf("private file mapping crc32: %08x (file %08x)\n", crc32_update(0, p, sizeof data),
           crc32_update(0, data, sizeof data));
    printf("bytes past the end of the file in the last page are zero: %s\n",
           p[sizeof data] == 0 && p[3 * 4096 - 1] == 0 ? "yes" : "no");
    munmap(p, sizeof data);
    unlink("mmapper_private.bin");

    fd = open("mmapper_shared.bin", O_CREAT | O_RDWR | O_TRUNC, 0644);
    CHECK(fd >= 0, "create mmapper_shared.bin");
    CHECK(ftruncate(fd, 2 * 4096) == 0, "ftruncate mmapper_shared.bin");
    p = mmap(NULL, 2 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHECK(p != MAP_FAILED, "mmap file shared");
    memcpy(p, "written through a shared mapping\n", 33);
    fill(p + 4096, 4096, 4);
    CHECK(msync(p, 2 * 4096, MS_SYNC) == 0, "msync");
    CHECK(munmap(p, 2 * 4096) == 0, "munmap shared");
    static unsigned char back[2 * 4096];
    CHECK(pread(fd, back, sizeof back, 0) == sizeof back, "read back mmapper_shared.bin");
    close(fd);
    printf("read back after msync: %.32s\n", back);
    printf("shared file crc32: %08x\n", crc32_update(0, back, sizeof back));
    unlink("mmapper_shared.bin");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: mmapper DIR\n");
        return 2;
    }
    anonymous();
    heap();
    CHECK(chdir(argv[1]) == 0, "chdir DIR");
    files();
    return 6;
}
