/* bench/handler.c as a co-process handler (wake.exec.process = true): one process
 * answers request after request. Same log contract as handler.c:
 *   argv: LOG
 * for each "register" request line on stdin, appends "KEY <epoch seconds>.<microseconds>\n"
 * (KEY: the request's idempotency key) to LOG in one O_APPEND write, then answers
 * {"idempotency_key": KEY, "schedule_id": "bench-<pid>", "updates": false} on stdout and
 * flushes: like the baselines' handler it needs only the wake, so it declines the final
 * envelope's update requests (an update that comes anyway is answered without a log
 * line). Exits at the end of stdin.
 * It relies on the daemon's request layout (op first, then the key); a demo, not a parser. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char KEY_FIELD[] = "\"idempotency_key\": \"";

int main(int argc, char **argv) {
    if (argc < 2) return 64;
    int fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return 74;
    char *req = NULL;
    size_t cap = 0;
    int pid = (int)getpid();
    while (getline(&req, &cap, stdin) > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        char *key = strstr(req, KEY_FIELD);
        if (key == NULL) return 65;
        key += sizeof KEY_FIELD - 1;
        char *end = strchr(key, '"');
        if (end == NULL || end - key > 200) return 65;
        *end = '\0';
        if (strncmp(req, "{\"op\": \"register\"", 17) == 0) {
            char line[512];
            int n = snprintf(line, sizeof line, "%s %lld.%06ld\n", key, (long long)ts.tv_sec,
                             ts.tv_nsec / 1000);
            if (n < 0 || n >= (int)sizeof line || write(fd, line, (size_t)n) != n) return 74;
        }
        printf("{\"idempotency_key\": \"%s\", \"schedule_id\": \"bench-%d\", \"updates\": false}\n",
               key, pid);
        fflush(stdout);
    }
    free(req);
    return 0;
}
