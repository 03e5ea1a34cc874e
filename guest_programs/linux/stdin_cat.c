/* stdin_cat: reads stdin to end of file in small chunks and copies it to stdout in
 * upper case, then prints the byte count, chunk count and CRC-32. Exits with status 7. */
#include <ctype.h>
#include <unistd.h>
#include "common.h"

int main(void)
{
    char buf[1000];
    size_t total = 0, chunks = 0;
    uint32_t crc = 0;
    ssize_t n;

    while ((n = read(0, buf, sizeof buf)) != 0) {
        if (n < 0) {
            CHECK(errno == EINTR, "read stdin");
            continue;
        }
        crc = crc32_update(crc, buf, n);
        total += n;
        chunks++;
        for (ssize_t i = 0; i < n; i++)
            buf[i] = toupper((unsigned char)buf[i]);
        fwrite(buf, 1, n, stdout);
    }
    printf("\nstdin: %zu bytes, crc32 %08x\n", total, crc);
    (void)chunks;   /* depends on how the bytes arrive (a pipe, a file): not printed */
    return 7;
}
