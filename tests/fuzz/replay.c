/* replay.c -- run a fuzz target's LLVMFuzzerTestOneInput on files, without
 * libFuzzer, so the corpus and every crash found so far are regression tests
 * (built with the normal compiler and flags, SANITIZE=1 included).
 *
 * usage: replay_<name> DIR|FILE...   (missing arguments are skipped)
 * Each input runs in a child process so one failure does not hide others;
 * prints "replay NAME: N passed, M failed" and exits 1 if any failed. */
#include "fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <sys/stat.h>
#include <sys/wait.h>

static int passed, failed;

static void run_one(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        failed++;
        return;
    }
    size_t cap = 4096, n = 0;
    uint8_t *buf = malloc(cap);
    size_t r;
    while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            uint8_t *nb = realloc(buf, cap *= 2);
            if (!nb)
                free(buf);
            buf = nb;
        }
    }
    fclose(f);
    if (!buf) {
        fprintf(stderr, "replay: %s: out of memory\n", path);
        failed++;
        return;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        /* an exactly sized copy, as libFuzzer gives, so overreads are caught */
        uint8_t *exact = malloc(n ? n : 1);
        if (!exact)
            _exit(3);
        memcpy(exact, buf, n);
        free(buf);
        LLVMFuzzerTestOneInput(exact, n);
        free(exact);
        exit(0); /* exit, not _exit: LeakSanitizer runs at exit */
    }
    free(buf);
    int st;
    if (pid < 0 || waitpid(pid, &st, 0) < 0) {
        fprintf(stderr, "replay: %s: cannot run: %s\n", path, strerror(errno));
        failed++;
        return;
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
        passed++;
    } else {
        if (WIFSIGNALED(st))
            fprintf(stderr, "replay: FAIL %s (signal %d)\n", path, WTERMSIG(st));
        else
            fprintf(stderr, "replay: FAIL %s (exit %d)\n", path, WEXITSTATUS(st));
        failed++;
    }
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

int main(int argc, char **argv)
{
    const char *name = strrchr(argv[0], '/');
    name = name ? name + 1 : argv[0];
    if (!strncmp(name, "replay_", 7))
        name += 7;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0)
            continue; /* e.g. no crashes/<name>/ yet */
        if (!S_ISDIR(st.st_mode)) {
            run_one(argv[i]);
            continue;
        }
        struct dirent **ents;
        int n = scandir(argv[i], &ents, NULL, by_name);
        if (n < 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            failed++;
            continue;
        }
        for (int j = 0; j < n; j++) {
            char p[4096];
            snprintf(p, sizeof p, "%s/%s", argv[i], ents[j]->d_name);
            if (ents[j]->d_name[0] != '.' && stat(p, &st) == 0 && S_ISREG(st.st_mode))
                run_one(p);
            free(ents[j]);
        }
        free(ents);
    }
    printf("replay %s: %d passed, %d failed\n", name, passed, failed);
    return failed ? 1 : 0;
}
