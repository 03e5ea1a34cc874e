/* hello: stdio, argv and the environment; exits with status 3. */
#include <stdio.h>

int main(int argc, char **argv, char **envp)
{
    puts("hello from a Linux program");
    printf("argc=%d\n", argc);
    for (int i = 0; i < argc; i++)
        printf("argv[%d]=%s\n", i, argv[i]);
    for (char **e = envp; *e; e++)
        printf("env %s\n", *e);
    return 3;
}
