/*
 * floor: the physical floor of a UDP relay, for benches/e2e/run.sh.
 *
 * It does what a stateless SIP relay must at least do with a datagram
 * (receive it, pick a destination, send it) and nothing else: no parsing.
 * One socket on LISTEN. A datagram from UPSTREAM goes to the last client
 * seen; any other datagram records its sender as the client and goes to
 * UPSTREAM. That is correct for one UAC (sipp's single UDP socket) and a UAS
 * that answers to the source address (sipp does): INVITE/ACK/BYE go up,
 * 180/200/200 come back, 6 datagrams per call.
 *
 *   floor A LISTEN UPSTREAM              recvfrom/sendto, one at a time
 *   floor B LISTEN UPSTREAM [BATCH [GATHER_US]]
 *        recvmmsg (MSG_WAITFORONE) / one sendmmsg per batch; with GATHER_US > 0
 *        it sleeps that long after the first datagram of a batch and then
 *        drains up to BATCH without blocking, so batches are full at a modest
 *        load (the cost per datagram falls, the latency rises by GATHER_US).
 *
 * A bare PORT means 127.0.0.1:PORT; IPv4:PORT names another address (the
 * veth bench, benches/e2e/xdp.sh). On SIGINT/SIGTERM it prints one line to stdout:
 *   floor mode=B datagrams=N batches=M
 * and exits 0. Build: gcc -O2 -Wall -o floor floor.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXB 256
#define DGRAM 65536

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static int same(const struct sockaddr_in *a, const struct sockaddr_in *b) {
	return a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr;
}

/* "PORT" (127.0.0.1) or "A.B.C.D:PORT" */
static int addr_of(const char *s, struct sockaddr_in *a) {
	char ip[64] = "127.0.0.1";
	const char *colon = strrchr(s, ':'), *port = s;
	if (colon) {
		size_t n = (size_t)(colon - s);
		if (n == 0 || n >= sizeof ip) return -1;
		memcpy(ip, s, n), ip[n] = 0, port = colon + 1;
	}
	*a = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons(atoi(port))};
	return inet_pton(AF_INET, ip, &a->sin_addr) == 1 && a->sin_port ? 0 : -1;
}

int main(int argc, char **argv) {
	if (argc < 4 || (argv[1][0] != 'A' && argv[1][0] != 'B')) {
		fprintf(stderr, "usage: floor A|B LISTEN UPSTREAM [BATCH [GATHER_US]]\n");
		return 2;
	}
	char mode = argv[1][0];
	int batch = argc > 4 ? atoi(argv[4]) : 64, gather_us = argc > 5 ? atoi(argv[5]) : 0;
	if (batch < 1 || batch > MAXB) batch = 64;
	struct sockaddr_in me, up;
	if (addr_of(argv[2], &me) < 0 || addr_of(argv[3], &up) < 0) {
		fprintf(stderr, "floor: LISTEN and UPSTREAM are PORT (on 127.0.0.1) or IPv4:PORT\n");
		return 2;
	}
	struct sockaddr_in client = up; /* until a client speaks, replies go nowhere useful */
	int fd = socket(AF_INET, SOCK_DGRAM, 0), sz = 4 << 20;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
	if (fd < 0 || bind(fd, (struct sockaddr *)&me, sizeof me) < 0) { perror("floor: bind"); return 1; }
	struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: a blocked recv returns EINTR */
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	static char buf[MAXB][DGRAM];
	static struct mmsghdr m[MAXB];
	static struct iovec iov[MAXB];
	static struct sockaddr_in src[MAXB];
	unsigned long long dgrams = 0, batches = 0;
	struct timespec gather = {.tv_sec = gather_us / 1000000, .tv_nsec = (gather_us % 1000000) * 1000L};
	while (!stop) {
		if (mode == 'A') {
			socklen_t sl = sizeof src[0];
			ssize_t n = recvfrom(fd, buf[0], DGRAM, 0, (struct sockaddr *)&src[0], &sl);
			if (n < 0) continue; /* EINTR (then stop is set) */
			const struct sockaddr_in *to = &up;
			if (same(&src[0], &up)) to = &client; else client = src[0];
			sendto(fd, buf[0], n, 0, (const struct sockaddr *)to, sizeof *to);
			dgrams++, batches++;
			continue;
		}
		for (int i = 0; i < batch; i++) {
			iov[i] = (struct iovec){.iov_base = buf[i], .iov_len = DGRAM};
			m[i].msg_hdr = (struct msghdr){.msg_name = &src[i], .msg_namelen = sizeof src[i],
			                               .msg_iov = &iov[i], .msg_iovlen = 1};
		}
		int n = recvmmsg(fd, m, batch, MSG_WAITFORONE, NULL);
		if (n <= 0) continue;
		if (n < batch && gather_us > 0) {
			nanosleep(&gather, NULL);
			int more = recvmmsg(fd, m + n, batch - n, MSG_DONTWAIT, NULL);
			if (more > 0) n += more;
		}
		for (int i = 0; i < n; i++) { /* the received msg_name becomes the destination */
			iov[i].iov_len = m[i].msg_len;
			if (same(&src[i], &up)) src[i] = client; else client = src[i], src[i] = up;
			m[i].msg_hdr.msg_namelen = sizeof src[i];
		}
		for (int sent = 0; sent < n;) {
			int k = sendmmsg(fd, m + sent, n - sent, 0);
			if (k <= 0) { if (errno == EINTR) continue; break; }
			sent += k;
		}
		dgrams += n, batches++;
	}
	printf("floor mode=%c datagrams=%llu batches=%llu\n", mode, dgrams, batches);
	return 0;
}
