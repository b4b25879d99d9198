/* conncount: an exact number of ordinary TCP connections, for the flow tests.
 *
 *   conncount serve ADDR PORT ACCEPTORS REQ RESP
 *       Listen on ADDR:PORT; ACCEPTORS processes accept, read REQ bytes, write RESP bytes and close
 *       first (the server holds the TIME_WAIT). Prints "ready" once listening; runs until killed.
 *   conncount churn ADDR PORT N CLIENTS REQ RESP
 *       CLIENTS processes make N connections in total: connect, write REQ bytes, read to EOF,
 *       close. Prints "<completed> <failed> <bytes read>"; a completed connection read exactly
 *       RESP bytes. Exit 0 when none failed.
 *   conncount refuse ADDR PORT N CLIENTS
 *       CLIENTS processes make N connects in total to ADDR:PORT, where nothing listens: each must be
 *       refused. Prints "<refused> <other>" (other: connected, or another error). Exit 0 when all were
 *       refused.
 * ADDR is an IPv4 or IPv6 literal. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static struct sockaddr_storage addr;
static socklen_t addrlen;

static void parse(const char *ip, int port)
{
    memset(&addr, 0, sizeof(addr));
    struct sockaddr_in *a4 = (struct sockaddr_in *)&addr;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&addr;
    if (inet_pton(AF_INET, ip, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        addrlen = sizeof(*a4);
    } else if (inet_pton(AF_INET6, ip, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(port);
        addrlen = sizeof(*a6);
    } else {
        fprintf(stderr, "bad address %s\n", ip);
        exit(2);
    }
}

static int xfer(int fd, char *buf, long n, int writing)
{
    while (n > 0) {
        long chunk = n > 65536 ? 65536 : n;
        ssize_t r = writing ? write(fd, buf, chunk) : read(fd, buf, chunk);
        if (r <= 0)
            return -1;
        n -= r;
    }
    return 0;
}

static int serve(int acceptors, long req, long resp)
{
    int ls = socket(addr.ss_family, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(ls, (struct sockaddr *)&addr, addrlen) || listen(ls, 4096)) {
        perror("listen");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    for (int i = 0; i < acceptors; i++) {
        if (fork() == 0) {
            static char buf[65536];
            for (;;) {
                int c = accept(ls, 0, 0);
                if (c < 0)
                    continue;
                if (xfer(c, buf, req, 0) == 0)
                    xfer(c, buf, resp, 1);
                close(c);
            }
        }
    }
    for (;;)
        pause();
}

static int churn(long n, int clients, long req, long resp)
{
    long *counts = mmap(0, 4096 * 4, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    for (int i = 0; i < clients; i++) {
        if (fork() == 0) {
            static char buf[65536];
            long mine = n / clients + (i < n % clients ? 1 : 0), ok = 0, bad = 0, got = 0;
            for (long j = 0; j < mine; j++) {
                int s = socket(addr.ss_family, SOCK_STREAM, 0);
                long seen = 0;
                ssize_t r = 0;
                if (connect(s, (struct sockaddr *)&addr, addrlen) == 0 && xfer(s, buf, req, 1) == 0) {
                    while ((r = read(s, buf, sizeof(buf))) > 0)
                        seen += r;
                }
                close(s);
                if (r == 0 && seen == resp)
                    ok++;
                else
                    bad++;
                got += seen;
            }
            counts[3 * i] = ok;
            counts[3 * i + 1] = bad;
            counts[3 * i + 2] = got;
            _exit(0);
        }
    }
    for (int i = 0; i < clients; i++)
        wait(0);
    long ok = 0, bad = 0, got = 0;
    for (int i = 0; i < clients; i++) {
        ok += counts[3 * i];
        bad += counts[3 * i + 1];
        got += counts[3 * i + 2];
    }
    printf("%ld %ld %ld\n", ok, bad, got);
    return bad ? 1 : 0;
}

static int refuse(long n, int clients)
{
    long *counts = mmap(0, 4096 * 4, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    for (int i = 0; i < clients; i++) {
        if (fork() == 0) {
            long mine = n / clients + (i < n % clients ? 1 : 0), refused = 0, other = 0;
            for (long j = 0; j < mine; j++) {
                int s = socket(addr.ss_family, SOCK_STREAM, 0);
                if (connect(s, (struct sockaddr *)&addr, addrlen) != 0 && errno == ECONNREFUSED)
                    refused++;
                else
                    other++;
                close(s);
            }
            counts[2 * i] = refused;
            counts[2 * i + 1] = other;
            _exit(0);
        }
    }
    for (int i = 0; i < clients; i++)
        wait(0);
    long refused = 0, other = 0;
    for (int i = 0; i < clients; i++) {
        refused += counts[2 * i];
        other += counts[2 * i + 1];
    }
    printf("%ld %ld\n", refused, other);
    return other ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc == 7 && strcmp(argv[1], "serve") == 0) {
        parse(argv[2], atoi(argv[3]));
        return serve(atoi(argv[4]), atol(argv[5]), atol(argv[6]));
    }
    if (argc == 8 && strcmp(argv[1], "churn") == 0) {
        parse(argv[2], atoi(argv[3]));
        return churn(atol(argv[4]), atoi(argv[5]), atol(argv[6]), atol(argv[7]));
    }
    if (argc == 6 && strcmp(argv[1], "refuse") == 0) {
        parse(argv[2], atoi(argv[3]));
        return refuse(atol(argv[4]), atoi(argv[5]));
    }
    fprintf(stderr, "usage: conncount serve ADDR PORT ACCEPTORS REQ RESP | churn ADDR PORT N CLIENTS REQ RESP | refuse ADDR PORT N CLIENTS\n");
    return 2;
}
