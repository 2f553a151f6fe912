/* The per-file handler every system runs, compiled: bench/handler.sh without
 * bash's ~1.8 ms start-up, so "rename -> handler start" measures the watcher
 * and the process spawn, not the shell. Same contract as handler.sh:
 *   argv: LOG [NAME]   NAME defaults to $ANU_WATCHD_IDEMPOTENCY_KEY
 * appends "NAME <epoch seconds>.<microseconds>\n" in one O_APPEND write (concurrent
 * handlers never interleave), then prints "bench-<pid>" (the exec sink's schedule id). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (argc < 2) return 64;
    const char *name = argc > 2 ? argv[2] : getenv("ANU_WATCHD_IDEMPOTENCY_KEY");
    if (name == NULL) name = "";
    char line[512];
    int n = snprintf(line, sizeof line, "%s %lld.%06ld\n", name, (long long)ts.tv_sec,
                     ts.tv_nsec / 1000);
    if (n < 0 || n >= (int)sizeof line) return 65;
    int fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, line, (size_t)n) != n) return 74;
    close(fd);
    printf("bench-%d\n", (int)getpid());
    return 0;
}
