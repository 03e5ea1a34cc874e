/* unsupported: calls system calls that ftvm's Linux personality does not implement and
 * prints the errno each one gave (ENOSYS under ftvm). Natively, io_uring_setup with a
 * null params pointer fails with EFAULT, and nfsservctl (removed from Linux in 3.1)
 * with ENOSYS. Exits with status 0. */
#define _GNU_SOURCE
#include <sys/syscall.h>
#include <unistd.h>
#include "common.h"

int main(void)
{
    long r = syscall(SYS_io_uring_setup, 1, NULL);
    printf("io_uring_setup: %ld %s\n", r, errno_name(r < 0 ? errno : 0));
    r = syscall(SYS_nfsservctl, 0, NULL, NULL);
    printf("nfsservctl: %ld %s\n", r, errno_name(r < 0 ? errno : 0));
    puts("still running");
    return 0;
}
