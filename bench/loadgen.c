// tcpscope benchmark load generator: native TCP connection churn.
//
//   loadgen serve ADDR PORT THREADS RESP_BYTES
//       Listen on ADDR:PORT (PORT 0 = any); THREADS threads accept, read the request, write
//       RESP_BYTES, then close first, so the server holds the TIME_WAIT and the client's
//       ephemeral port is free again at once (the client ends LAST_ACK -> CLOSE).
//       Prints "ready PORT" on stdout once listening; runs until SIGTERM/SIGINT.
//   loadgen churn ADDR PORT THREADS SECONDS RATE REQ_BYTES
//       THREADS threads loop connect / send REQ_BYTES / read to EOF / close for SECONDS seconds,
//       paced to RATE connections/s in total (0 = as fast as possible). Prints one JSON line:
//       {"connections": N, "errors": E, "seconds": S, "rate": N/S}.
//   loadgen storm KIND ADDR PORT THREADS SECONDS RATE
//       A storm of anomalies for SECONDS seconds, paced to RATE attempts/s in total (0 = as fast as
//       possible); prints the same JSON line, "connections" counting the attempts that went as KIND says:
//         refused   connect to ADDR:PORT where nothing listens: each refused (ECONNREFUSED)
//         rst       connect to a loadgen server, write REQ bytes (64), abort with a RST (SO_LINGER 0)
//         synflood  a non-blocking connect whose handshake never completes (the caller drops the
//                   server's SYN-ACKs on the way), closed after 1 s in SYN_SENT; each thread keeps at
//                   most 4096 open. Counted when issued.
//
// Built by bench/ at run time with `gcc -O2 -pthread`. Addresses may be IPv4 or IPv6 literals.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_storage g_addr;
static socklen_t g_addrlen;
static int g_listen_fd = -1;
static int g_resp_bytes, g_req_bytes;
static double g_seconds, g_rate_per_thread;
static atomic_long g_conns, g_errors;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int parse_addr(const char *host, int port) {
    memset(&g_addr, 0, sizeof g_addr);
    struct sockaddr_in *a4 = (struct sockaddr_in *)&g_addr;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&g_addr;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((unsigned short)port);
        g_addrlen = sizeof *a4;
        return 0;
    }
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((unsigned short)port);
        g_addrlen = sizeof *a6;
        return 0;
    }
    return -1;
}

static void *serve_thread(void *arg) {
    (void)arg;
    char buf[65536];
    memset(buf, 'r', sizeof buf);
    for (;;) {
        int fd = accept(g_listen_fd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE) continue;
            return NULL;
        }
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n > 0) {
            int left = g_resp_bytes;
            while (left > 0) {
                ssize_t w = send(fd, buf, left > (int)sizeof buf ? sizeof buf : (size_t)left, MSG_NOSIGNAL);
                if (w <= 0) break;
                left -= (int)w;
            }
        }
        close(fd);
    }
}

static int serve(int threads) {
    int one = 1;
    g_listen_fd = socket(g_addr.ss_family, SOCK_STREAM, 0);
    if (g_listen_fd < 0) { perror("socket"); return 1; }
    setsockopt(g_listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(g_listen_fd, (struct sockaddr *)&g_addr, g_addrlen) < 0) { perror("bind"); return 1; }
    if (listen(g_listen_fd, 4096) < 0) { perror("listen"); return 1; }
    struct sockaddr_storage bound;
    socklen_t bl = sizeof bound;
    getsockname(g_listen_fd, (struct sockaddr *)&bound, &bl);
    int port = bound.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&bound)->sin_port)
                                          : ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
    // Block the stop signals in every thread; the main thread waits for them.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    for (int i = 0; i < threads; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, serve_thread, NULL) != 0) { perror("pthread_create"); return 1; }
    }
    printf("ready %d\n", port);
    fflush(stdout);
    int sig;
    sigwait(&set, &sig);
    return 0;
}

static void *churn_thread(void *arg) {
    (void)arg;
    char req[65536], buf[65536];
    memset(req, 'q', sizeof req);
    double start = now_s(), end = start + g_seconds;
    double interval = g_rate_per_thread > 0 ? 1.0 / g_rate_per_thread : 0;
    double next = start;
    long conns = 0, errors = 0;
    for (;;) {
        double t = now_s();
        if (t >= end) break;
        if (interval > 0) {
            if (next > t) {
                double d = next - t;
                struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
                nanosleep(&ts, NULL);
                if (now_s() >= end) break;
            }
            next += interval;
            // never build up more than a second of backlog after a stall
            if (next < now_s() - 1.0) next = now_s();
        }
        int fd = socket(g_addr.ss_family, SOCK_STREAM, 0);
        if (fd < 0) { errors++; continue; }
        int ok = connect(fd, (struct sockaddr *)&g_addr, g_addrlen) == 0;
        if (ok) {
            int left = g_req_bytes;
            while (ok && left > 0) {
                ssize_t w = send(fd, req, left > (int)sizeof req ? sizeof req : (size_t)left, MSG_NOSIGNAL);
                if (w <= 0) ok = 0; else left -= (int)w;
            }
            ssize_t n;
            while (ok && (n = recv(fd, buf, sizeof buf, 0)) != 0) {
                if (n < 0) ok = 0;
            }
        }
        close(fd);
        if (ok) conns++; else errors++;
    }
    atomic_fetch_add(&g_conns, conns);
    atomic_fetch_add(&g_errors, errors);
    return NULL;
}

static int churn(int threads) {
    pthread_t tids[256];
    if (threads > 256) threads = 256;
    double start = now_s();
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&tids[i], NULL, churn_thread, NULL) != 0) { perror("pthread_create"); return 1; }
    }
    for (int i = 0; i < threads; i++) pthread_join(tids[i], NULL);
    double secs = now_s() - start;
    long c = atomic_load(&g_conns), e = atomic_load(&g_errors);
    printf("{\"connections\": %ld, \"errors\": %ld, \"seconds\": %.6f, \"rate\": %.3f}\n", c, e, secs,
           secs > 0 ? (double)c / secs : 0.0);
    return 0;
}

static int g_storm;  // 0 refused, 1 rst, 2 synflood

static int storm_attempt(char *req, int *pending, double *opened, int *npending) {
    int fd = socket(g_addr.ss_family, SOCK_STREAM | (g_storm == 2 ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0) return 0;
    if (g_storm == 0) {
        int ok = connect(fd, (struct sockaddr *)&g_addr, g_addrlen) != 0 && errno == ECONNREFUSED;
        close(fd);
        return ok;
    }
    if (g_storm == 1) {
        int ok = connect(fd, (struct sockaddr *)&g_addr, g_addrlen) == 0 &&
                 send(fd, req, (size_t)g_req_bytes, MSG_NOSIGNAL) == g_req_bytes;
        struct linger lg = {1, 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        close(fd);
        return ok;
    }
    // synflood: keep it open a second (its SYN is retransmitted once), then close it in SYN_SENT
    int ok = connect(fd, (struct sockaddr *)&g_addr, g_addrlen) != 0 && errno == EINPROGRESS;
    double t = now_s();
    int i = 0;
    while (i < *npending) {  // close those older than a second, and make room
        if (t - opened[i] >= 1.0 || *npending >= 4096) {
            close(pending[i]);
            pending[i] = pending[*npending - 1];
            opened[i] = opened[*npending - 1];
            (*npending)--;
        } else {
            i++;
        }
    }
    pending[*npending] = fd;
    opened[*npending] = t;
    (*npending)++;
    return ok;
}

static void *storm_thread(void *arg) {
    (void)arg;
    static __thread int pending[4096];
    static __thread double opened[4096];
    int npending = 0;
    char req[65536];
    memset(req, 'q', sizeof req);
    double start = now_s(), end = start + g_seconds;
    double interval = g_rate_per_thread > 0 ? 1.0 / g_rate_per_thread : 0, next = start;
    long n = 0, errors = 0;
    while (now_s() < end) {
        if (interval > 0) {
            double t = now_s();
            if (next > t) {
                double d = next - t;
                struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
                nanosleep(&ts, NULL);
            }
            next += interval;
            if (next < now_s() - 1.0) next = now_s();
        }
        if (storm_attempt(req, pending, opened, &npending)) n++; else errors++;
    }
    for (int i = 0; i < npending; i++) close(pending[i]);
    atomic_fetch_add(&g_conns, n);
    atomic_fetch_add(&g_errors, errors);
    return NULL;
}

static int storm(int threads) {
    pthread_t tids[256];
    if (threads > 256) threads = 256;
    double start = now_s();
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&tids[i], NULL, storm_thread, NULL) != 0) { perror("pthread_create"); return 1; }
    }
    for (int i = 0; i < threads; i++) pthread_join(tids[i], NULL);
    double secs = now_s() - start;
    long c = atomic_load(&g_conns), e = atomic_load(&g_errors);
    printf("{\"connections\": %ld, \"errors\": %ld, \"seconds\": %.6f, \"rate\": %.3f}\n", c, e, secs,
           secs > 0 ? (double)c / secs : 0.0);
    return 0;
}

static void usage(void) {
    fprintf(stderr, "usage: loadgen serve ADDR PORT THREADS RESP_BYTES\n"
                    "       loadgen churn ADDR PORT THREADS SECONDS RATE REQ_BYTES\n"
                    "       loadgen storm refused|rst|synflood ADDR PORT THREADS SECONDS RATE\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    if (strcmp(argv[1], "serve") == 0 && argc == 6) {
        if (parse_addr(argv[2], atoi(argv[3])) < 0) usage();
        g_resp_bytes = atoi(argv[5]);
        return serve(atoi(argv[4]) > 0 ? atoi(argv[4]) : 1);
    }
    if (strcmp(argv[1], "churn") == 0 && argc == 8) {
        if (parse_addr(argv[2], atoi(argv[3])) < 0) usage();
        int threads = atoi(argv[4]) > 0 ? atoi(argv[4]) : 1;
        g_seconds = atof(argv[5]);
        g_rate_per_thread = atof(argv[6]) / threads;
        g_req_bytes = atoi(argv[7]) > 0 ? atoi(argv[7]) : 1;
        return churn(threads);
    }
    if (strcmp(argv[1], "storm") == 0 && argc == 8) {
        const char *kinds[] = {"refused", "rst", "synflood"};
        g_storm = -1;
        for (int i = 0; i < 3; i++)
            if (strcmp(argv[2], kinds[i]) == 0) g_storm = i;
        if (g_storm < 0 || parse_addr(argv[3], atoi(argv[4])) < 0) usage();
        int threads = atoi(argv[5]) > 0 ? atoi(argv[5]) : 1;
        g_seconds = atof(argv[6]);
        g_rate_per_thread = atof(argv[7]) / threads;
        g_req_bytes = 64;
        return storm(threads);
    }
    usage();
    return 2;
}
