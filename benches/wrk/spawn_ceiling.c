// The ceiling of fork mode on this machine, without HTTP: W threads, each in a loop that
// does what the watchdog does per request (stdin and stdout pipes, posix_spawn of the
// program in its own process group, write a 15-byte body, close stdin, read stdout to EOF,
// waitpid), with the caller's whole environment. Prints spawns per second; run it under
// `perf stat -e task-clock` to get the CPU time per spawn.
//
//   cc -O2 -o /tmp/spawn_ceiling benches/wrk/spawn_ceiling.c -lpthread
//   perf stat -e task-clock /tmp/spawn_ceiling 2 2000 /usr/bin/cat
//
// The same binary run against a static no-libc program (see benches/wrk/exit0.c) shows how
// much of that is the spawned program's own start-up.
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;
static int n_per_worker;
static const char *prog;

static void *worker(void *arg) {
  (void)arg;
  char *argv[] = {(char *)prog, NULL};
  for (int i = 0; i < n_per_worker; i++) {
    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC)) { perror("pipe2"); exit(1); }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawnattr_t at;
    posix_spawnattr_init(&at);
    sigset_t def;
    sigemptyset(&def);
    sigaddset(&def, SIGPIPE);
    posix_spawnattr_setsigdefault(&at, &def);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF);
    posix_spawnattr_setpgroup(&at, 0);
    pid_t pid;
    if (posix_spawn(&pid, prog, &fa, &at, argv, environ)) { perror("posix_spawn"); exit(1); }
    close(in[0]);
    close(out[1]);
    // A program that does not read its stdin (exit0) makes this fail with EPIPE: fine.
    ssize_t w = write(in[1], "hello, watchdog", 15);
    (void)w;
    close(in[1]);
    char buf[256];
    while (read(out[0], buf, sizeof buf) > 0) {}
    close(out[0]);
    int st;
    waitpid(pid, &st, 0);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
  }
  return NULL;
}

int main(int argc, char **argv) {
  int workers = argc > 1 ? atoi(argv[1]) : 2;
  n_per_worker = argc > 2 ? atoi(argv[2]) : 2000;
  prog = argc > 3 ? argv[3] : "/usr/bin/cat";
  if (workers < 1 || workers > 64) { fprintf(stderr, "1 to 64 workers\n"); return 2; }
  signal(SIGPIPE, SIG_IGN);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  pthread_t t[64];
  for (int i = 0; i < workers; i++) pthread_create(&t[i], NULL, worker, NULL);
  for (int i = 0; i < workers; i++) pthread_join(t[i], NULL);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
  printf("%d workers x %d spawns of %s: %.2f s = %.0f spawns/s\n", workers, n_per_worker, prog,
         s, workers * n_per_worker / s);
  return 0;
}
