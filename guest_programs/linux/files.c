/* files: file-system calls in the directory given as argv[1]. Works in a fresh
 * subdirectory "files_work" (removed again at the end) and prints what it reads back.
 * Exits with status 4. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include "common.h"

#define WORK "files_work"

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Prints the names in the current directory, sorted (readdir's order is the file system's). */
static void list_dir(void)
{
    char *names[64];
    int n = 0;
    DIR *d = opendir(".");
    CHECK(d, "opendir");
    struct dirent *e;
    while ((e = readdir(d)) && n < 64)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            names[n++] = strdup(e->d_name);
    closedir(d);
    qsort(names, n, sizeof names[0], cmp_str);
    printf("dir:");
    for (int i = 0; i < n; i++) {
        printf(" %s", names[i]);
        free(names[i]);
    }
    printf("\n");
}

/* Leftovers of an interrupted earlier run. */
static void clean(void)
{
    static const char *files[] = {"a.txt", "b.txt", "c.txt", "sub/d.txt"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        unlink(files[i]);
    unlinkat(AT_FDCWD, "sub", AT_REMOVEDIR);
}

int main(int argc, char **argv)
{
    char buf[256], cwd[4096];
    struct stat st;

    if (argc < 2) {
        fprintf(stderr, "usage: files DIR\n");
        return 2;
    }
    CHECK(chdir(argv[1]) == 0, "chdir DIR");
    CHECK(getcwd(cwd, sizeof cwd), "getcwd");
    if (mkdir(WORK, 0755) != 0)
        CHECK(errno == EEXIST, "mkdir " WORK);
    CHECK(chdir(WORK) == 0, "chdir " WORK);
    clean();
    CHECK(getcwd(buf, sizeof buf), "getcwd " WORK);
    size_t len = strlen(buf);
    printf("cwd ends with /" WORK ": %s\n",
           len > strlen(WORK) && !strcmp(buf + len - strlen(WORK) - 1, "/" WORK) ? "yes" : "no");

    /* write, writev, lseek, read */
    int fd = open("a.txt", O_CREAT | O_RDWR | O_TRUNC, 0644);
    CHECK(fd >= 0, "open a.txt");
    CHECK(write(fd, "hello world\n", 12) == 12, "write");
    struct iovec wv[2] = {{"second ", 7}, {"line\n", 5}};
    CHECK(writev(fd, wv, 2) == 12, "writev");
    CHECK(lseek(fd, 0, SEEK_SET) == 0, "lseek");
    ssize_t n = read(fd, buf, sizeof buf - 1);
    CHECK(n == 24, "read");
    buf[n] = 0;
    printf("read back: %s", buf);

    /* pread, pwrite, readv; the file offset stays where read left it */
    n = pread(fd, buf, 5, 6);
    CHECK(n == 5, "pread");
    printf("pread at 6: %.5s\n", buf);
    CHECK(pwrite(fd, "HELLO", 5, 0) == 5, "pwrite");
    printf("offset after pread/pwrite: %ld\n", (long)lseek(fd, 0, SEEK_CUR));
    char part1[6] = {0}, part2[19] = {0};
    struct iovec rv[2] = {{part1, 5}, {part2, 18}};
    CHECK(lseek(fd, 0, SEEK_SET) == 0, "lseek 0");
    CHECK(readv(fd, rv, 2) == 23, "readv");
    printf("readv: [%s] [%.6s...]\n", part1, part2);

    /* fstat, stat, ftruncate, fsync */
    CHECK(fstat(fd, &st) == 0, "fstat");
    printf("fstat: size %ld, regular %s, mode %o\n", (long)st.st_size,
           S_ISREG(st.st_mode) ? "yes" : "no", (unsigned)(st.st_mode & 0777));
    CHECK(ftruncate(fd, 5) == 0, "ftruncate");
    CHECK(fsync(fd) == 0, "fsync");
    CHECK(stat("a.txt", &st) == 0, "stat");
    printf("stat after ftruncate: size %ld\n", (long)st.st_size);

    /* dup2 shares the offset; fcntl flags */
    CHECK(dup2(fd, 10) == 10, "dup2");
    CHECK(lseek(10, 1, SEEK_SET) == 1, "lseek via dup");
    printf("offset seen by the original fd: %ld\n", (long)lseek(fd, 0, SEEK_CUR));
    n = read(10, buf, sizeof buf);
    printf("read via fd 10: %.*s\n", (int)n, buf);
    printf("F_GETFD: %d\n", fcntl(10, F_GETFD));
    CHECK(fcntl(10, F_SETFD, FD_CLOEXEC) == 0, "F_SETFD");
    printf("F_GETFD after F_SETFD: %d\n", fcntl(10, F_GETFD));
    printf("F_GETFL access mode is O_RDWR: %s\n", (fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDWR ? "yes" : "no");
    int fd2 = fcntl(fd, F_DUPFD_CLOEXEC, 20);
    printf("F_DUPFD_CLOEXEC from 20: %d\n", fd2);
    close(fd2);
    close(10);
    close(fd);

    /* append mode */
    fd = open("a.txt", O_WRONLY | O_APPEND);
    CHECK(fd >= 0, "open O_APPEND");
    CHECK(write(fd, "+tail\n", 6) == 6, "append");
    close(fd);
    fd = open("a.txt", O_RDONLY);
    n = read(fd, buf, sizeof buf);
    close(fd);
    printf("after append: %.*s", (int)n, buf);

    /* rename, a subdirectory, errors, listing */
    CHECK(rename("a.txt", "b.txt") == 0, "rename");
    int r = stat("a.txt", &st);
    printf("stat a.txt after rename: %d %s\n", r, errno_name(errno));
    r = open("missing.txt", O_RDONLY);
    printf("open missing: %d %s\n", r, errno_name(errno));
    fd = open("c.txt", O_CREAT | O_WRONLY | O_EXCL, 0600);
    CHECK(fd >= 0, "open c.txt");
    close(fd);
    r = open("c.txt", O_CREAT | O_WRONLY | O_EXCL, 0600);
    printf("O_EXCL again: %d %s\n", r, errno_name(errno));
    CHECK(mkdir("sub", 0700) == 0, "mkdir sub");
    fd = open("sub/d.txt", O_CREAT | O_WRONLY | O_TRUNC, 0644);
    CHECK(fd >= 0 && write(fd, "in sub\n", 7) == 7, "write sub/d.txt");
    close(fd);
    CHECK(stat("sub", &st) == 0 && S_ISDIR(st.st_mode), "stat sub");
    list_dir();

    /* clean up and go back */
    CHECK(unlink("b.txt") == 0 && unlink("c.txt") == 0 && unlink("sub/d.txt") == 0, "unlink");
    r = unlink("b.txt");
    printf("unlink missing: %d %s\n", r, errno_name(errno));
    CHECK(unlinkat(AT_FDCWD, "sub", AT_REMOVEDIR) == 0, "remove sub");
    list_dir();
    CHECK(chdir("..") == 0, "chdir ..");
    CHECK(unlinkat(AT_FDCWD, WORK, AT_REMOVEDIR) == 0, "remove " WORK);
    CHECK(getcwd(buf, sizeof buf) && !strcmp(buf, cwd), "getcwd after chdir ..");
    printf("back in DIR: yes\n");
    return 4;
}
