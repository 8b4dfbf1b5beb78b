/*
 * loadgen: the open-loop load generator of benchmarks.measure, in C, so that the instrument
 * costs a small fraction of a core and the server, not the clients, sets the pace.
 *
 * Usage (benchmarks/measure.py builds the command; it is not meant to be typed):
 *   loadgen --mode json|raw|udp|packets|reliable-packets --host H --port P --clients N
 *           --period-ns P --warmup-ns W --duration-ns D --drain-ns R [--pad K]
 *           [--server-pid PID] [--also-pid PID]... [--lead-ns L] [--fractions F,F,...]
 *
 * The method is the one of benchmarks/measure.py, step for step (read its docstring):
 * - mode json speaks the project's TCP protocol (hello, welcome, say, message frames, one JSON
 *   object a line); mode raw the assignment's text server (the first line is the name, every
 *   later line a message, no echo to the sender); mode udp the UDP server's raw 1.0 sessions
 *   (one frame a datagram, the session's token and a seq in every frame after the welcome, no
 *   acks); mode packets its raw packet sessions (protocol v1.2: after the welcome every
 *   datagram is a packet, a header line {"pn":N,"session":T} then frames; a ping proves the
 *   client's address at once and again each second until a packet comes; a packet number seen
 *   before, or 65,536 or more from the largest, is dropped; raw sessions send no acks); mode
 *   reliable-packets its reliable packet sessions, as benchmarks.clients drives them through
 *   common.protocol.packetlink, kept to what the protocol asks of a client:
 *   - acks: the packet numbers received are kept as at most 16 ranges (past that the lowest is
 *     forgotten); an ack {"type":"ack","ranges":[[HI,LO],...],"delay":MS} is due once two
 *     packets holding more than acks arrived, or 15 ms after the first (25 ms less the 10 ms
 *     packetlink leaves for a late timer), and goes alone then; it rides with a say sent
 *     earlier unless the server's packets come closer together than 25 ms (the next one soon
 *     makes it due). MS is how long the largest packet number waited.
 *   - frames are handed on by seq once and in order (the welcome is seq 1): an early one,
 *     up to 1,024 ahead, is held; one seen before or farther ahead is dropped (the server
 *     sends it again); only what is handed on is searched for markers.
 *   - every frame the client sends (ping, say, bye) gets the next seq and is kept until a
 *     packet carrying it is acknowledged. An ack also gives an RTT sample (RFC 9002 5.3: on
 *     the largest number it acknowledges, if that one is newly acknowledged) and declares
 *     lost a frame whose packet is 3 or more numbers below the largest acknowledged, or was
 *     sent 9/8 of max(smoothed, latest RTT), at least 1 ms, before now: it goes again at
 *     once in a new packet (a packet number is never reused). A probe timeout, smoothed RTT
 *     + max(4 x RTT variance, 1 ms) + 25 ms after the last packet holding frames (initial
 *     RTT 100 ms), sends the oldest unacknowledged frames again, a packet's worth, and
 *     doubles on each expiry in a row (up to 2^6); an ack of anything new resets it. No
 *     congestion window: a client sends a say every period, far below what one would hold
 *     back, and the client never gives up on the server (what it never acks counts as lost).
 *   The output counts the acks sent (`acks_sent`) and the frames sent again (`retransmitted`).
 * - Clients connect one after the other (json: each waits for its welcome; raw: all, then each
 *   is known to be in the room once it heard of someone's join or someone heard of its own;
 *   udp: every hello at once, again each second to those without a welcome, 5 times at most).
 * - Open loop: slot s belongs to client s % N, round s / N, and is due at t0 + s * P / N
 *   (integer division), t0 a lead after the last connect. Every say text is the marker
 *   #<client>:<round>:<scheduled ns>. A message counts as sent once its last byte is taken by
 *   the socket; bytes the socket does not take wait in the client's own queue. A datagram
 *   counts as sent when it is written, or refused (then it is a send error, lost as on a net).
 * - Latency is arrival minus scheduled time; the measured window is [t0 + W, t0 + W + D).
 *   An arrival is one recv, of which only the whole lines count (the rest waits for the next;
 *   a datagram counts whole).
 *   Its markers found while the window runs count as the window's deliveries; each marker is
 *   unexpected (never sent), a duplicate (seen before by this client), a reorder (older than
 *   one already seen from its sender) or new; a new one of a message due in the window gives
 *   a latency.
 * - After the window, the drain: until every message sent reached every recipient and no
 *   queue waits, or until the drain time is over; raw udp and packets also once nothing new
 *   came for half a second (what raw UDP lost never comes). Reliable packet sessions keep
 *   acking and sending again through the drain. What arrives later is not read.
 * - The server's CPU (/proc/PID/stat ticks), with that of every --also-pid (a server's Redis:
 *   what the chat costs in all), and this process's CPU (getrusage) are read when the window
 *   starts and when it ends.
 * - One clock, CLOCK_MONOTONIC, the clock of Python's time.monotonic_ns().
 *
 * It prints one JSON object on stdout: the counts, the nearest-rank percentiles (asked for as
 * fractions) of the latencies and of the send lags in ns, and the CPU. Progress lines go to
 * stderr, starting with "progress: ". An error is one line on stderr and exit status 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define RECV_BYTES (1 << 20)
#define MAX_PENDING (64 * 1024)
#define CONNECT_TIMEOUT_S 10
#define IDLE_WAIT_NS 50000000LL
#define PROGRESS_NS 1000000000LL
#define MAX_EVENTS 64
#define MAX_FRACTIONS 32
#define DATAGRAM_BYTES 65536
#define UDP_BUFFER_BYTES (4 << 20)
#define HELLO_TRIES 5
#define QUIET_NS 500000000LL
#define PN_WINDOW (1 << 16)
#define MAX_PN (1LL << 30)
#define PROOF_INTERVAL_NS 1000000000LL
#define MAX_PACKET_BYTES 1200
#define FRAME_BYTES 256
#define MAX_ACK_RANGES 16
#define ACK_ELICITING_THRESHOLD 2
#define MAX_ACK_DELAY_NS 25000000LL
#define ACK_TIMER_SLACK_NS 10000000LL
#define RECEIVE_WINDOW 1024
#define PACKET_THRESHOLD 3
#define INITIAL_RTT_NS 100000000LL
#define GRANULARITY_NS 1000000LL
#define MAX_BACKOFF 6
#define PROBE_FRAMES 64

typedef struct {
    int64_t *items;
    size_t len, cap;
} Vec;

typedef struct {
    int64_t slot;
    int64_t end; /* the byte count written once this message's last byte is taken */
} Queued;

/* A frame of a reliable packet session, kept until a packet carrying it is acknowledged. */
typedef struct {
    int64_t pn, sent_ns; /* the packet that last carried it, and when */
    int len;
    char text[FRAME_BYTES];
} Outgoing;

/* What a reliable packet session keeps besides a raw one's (see the header comment). */
typedef struct {
    int64_t expected;          /* the next seq to hand on */
    char **held;               /* early frames, by seq % RECEIVE_WINDOW */
    size_t *held_len;
    int64_t lows[MAX_ACK_RANGES + 1], highs[MAX_ACK_RANGES + 1]; /* pns received, ascending */
    int ranges;
    int eliciting;             /* packets needing an ack since the last ack */
    int64_t ack_deadline, largest_at, eliciting_at, eliciting_gap;
    Outgoing *unacked;
    size_t n_unacked, cap_unacked;
    int64_t largest_acked, last_eliciting_ns;
    int64_t srtt, rttvar, min_rtt, latest_rtt;
    int has_rtt, probes;       /* probes: probe timeouts in a row */
} Reliable;

typedef struct {
    int fd;
    int index;
    int open;   /* still read: not closed by the server */
    int broken; /* a send failed: nothing more is written */
    int watching_out;
    char *out;
    size_t out_off, out_len, out_cap;
    Queued *queue;
    size_t q_head, q_len, q_cap;
    int64_t queued_bytes, written_bytes;
    char *pending;
    size_t pending_len;
    int64_t *newest; /* per sender: the newest scheduled time seen from it */
    uint8_t *seen;   /* bitmap over slots */
    int64_t too_slow_ns;
    char token[72]; /* udp: the session's token, empty until the welcome */
    int64_t next_seq;
    int64_t next_pn, largest_pn, packets_received; /* packets */
    int64_t proof_due;                             /* packets: when to ping again; 0: proven */
    uint8_t *pns;                                  /* packets: bitmap of the numbers seen */
    size_t pns_bytes;
    Reliable *rel; /* reliable packets, from the welcome on */
} Client;

#define MAX_ALSO_PIDS 4

static struct {
    int raw, udp, packets, reliable;
    const char *host, *port;
    int n;
    int64_t period, warmup, duration, drain, lead;
    int pad;
    long server_pid;
    long also_pids[MAX_ALSO_PIDS];
    int nalso;
    double fractions[MAX_FRACTIONS];
    int nfractions;
} opt = {.host = "127.0.0.1", .lead = 300000000LL, .server_pid = 0};

static Client *clients;
static int64_t t0, start_ns, end_ns, nslots;
static uint8_t *sent_bits;
static int64_t send_errors;
static int64_t sent_total, sent_in_window, received_marks, in_window;
static int64_t duplicates, reorders, unexpected;
static int64_t acks_sent, retransmitted;
static Vec latencies, lags;
static char *padding;
static size_t padding_len;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void progress(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void die(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fputs("loadgen: ", stderr);
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
    va_end(args);
    exit(1);
}

static void *xalloc(size_t size) {
    void *p = calloc(1, size ? size : 1);
    if (!p) die("out of memory");
    return p;
}

static void *xrealloc(void *p, size_t size) {
    p = realloc(p, size);
    if (!p) die("out of memory");
    return p;
}

static void push(Vec *v, int64_t x) {
    if (v->len == v->cap) {
        v->cap = v->cap ? 2 * v->cap : 4096;
        v->items = xrealloc(v->items, v->cap * sizeof *v->items);
    }
    v->items[v->len++] = x;
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void progress(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fputs("progress: ", stderr);
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
    fflush(stderr);
    va_end(args);
}

static int64_t due(int64_t slot) { return t0 + slot * opt.period / opt.n; }

static int64_t recipients(void) { return opt.raw ? opt.n - 1 : opt.n; }

static double own_cpu_s(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6 + usage.ru_stime.tv_sec +
           usage.ru_stime.tv_usec / 1e6;
}

/* A process's user + system time in clock ticks (fields 14 and 15 of proc(5)). */
static long long pid_ticks(long pid) {
    char path[64], text[4096];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) die("cannot read %s: %s", path, strerror(errno));
    size_t size = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[size] = 0;
    char *p = strrchr(text, ')');
    if (!p) die("unreadable %s", path);
    p += 2;
    long long utime = 0, stime = 0;
    for (int field = 3; field <= 15 && p; field++) {
        if (field == 14) utime = strtoll(p, NULL, 10);
        if (field == 15) stime = strtoll(p, NULL, 10);
        p = strchr(p, ' ');
        if (p) p++;
    }
    return utime + stime;
}

/* The server's ticks and those of every --also-pid; -1 if no server pid was given. */
static long long server_ticks(void) {
    if (opt.server_pid <= 0) return -1;
    long long ticks = pid_ticks(opt.server_pid);
    for (int i = 0; i < opt.nalso; i++) ticks += pid_ticks(opt.also_pids[i]);
    return ticks;
}

/* A number field of /proc/PID/status (VmHWM in kB, Threads); -1 if none. */
static long long server_status(const char *key) {
    if (opt.server_pid <= 0) return -1;
    char path[64], line[256];
    size_t key_len = strlen(key);
    long long value = -1;
    snprintf(path, sizeof path, "/proc/%ld/status", opt.server_pid);
    FILE *f = fopen(path, "r");
    if (!f) die("cannot read %s: %s", path, strerror(errno));
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, key_len) && line[key_len] == ':')
            value = strtoll(line + key_len + 1, NULL, 10);
    fclose(f);
    return value;
}

/* ---- sending ---- */

static void set_watch(int ep, Client *c, int out) {
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.u32 = c->index};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
    c->watching_out = out;
}

static int blocked(const Client *c) { return c->out_len > c->out_off && !c->broken; }

static void mark_sent(int64_t slot) {
    sent_bits[slot >> 3] |= (uint8_t)(1 << (slot & 7));
    sent_total++;
    if (due(slot) >= start_ns && due(slot) < end_ns) sent_in_window++;
}

/* A datagram is written whole or not at all; one the kernel refuses is lost, as on a net. */
static void send_datagram(Client *c, const char *data, size_t len) {
    if (send(c->fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) send_errors++;
}

/* Write what the socket takes; a message counts as sent once its last byte is taken. */
static void flush(Client *c) {
    if (c->broken || c->out_len == c->out_off) return;
    ssize_t written = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
                           MSG_NOSIGNAL | MSG_DONTWAIT);
    if (written < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) c->broken = 1;
        return;
    }
    c->out_off += (size_t)written;
    c->written_bytes += written;
    if (c->out_off == c->out_len) c->out_off = c->out_len = 0;
    while (c->q_len && c->queue[c->q_head].end <= c->written_bytes) {
        mark_sent(c->queue[c->q_head].slot);
        c->q_head = (c->q_head + 1) % c->q_cap;
        c->q_len--;
    }
}

/* ---- reliable packet sessions: sending ---- */

static int64_t next_timer = INT64_MAX; /* the earliest ack or probe deadline of any client */

static void arm(int64_t when) {
    if (when < next_timer) next_timer = when;
}

/* The probe timeout: smoothed RTT + max(4 x variance, 1 ms) + the peer's max ack delay. */
static int64_t pto_ns(const Reliable *r) {
    int64_t variance = 4 * r->rttvar > GRANULARITY_NS ? 4 * r->rttvar : GRANULARITY_NS;
    return r->srtt + variance + MAX_ACK_DELAY_NS;
}

static int64_t probe_deadline(const Reliable *r) {
    if (!r->n_unacked) return INT64_MAX;
    int backoff = r->probes < MAX_BACKOFF ? r->probes : MAX_BACKOFF;
    return r->last_eliciting_ns + (pto_ns(r) << backoff);
}

static int64_t deadline_of(const Reliable *r) {
    int64_t probe = probe_deadline(r);
    return r->eliciting && r->ack_deadline < probe ? r->ack_deadline : probe;
}

static int ack_due(const Reliable *r, int64_t now) {
    return r->eliciting >= ACK_ELICITING_THRESHOLD || (r->eliciting && now >= r->ack_deadline);
}

/* Whether an ack owed rides with frames sent now: not while the server's packets come closer
 * together than the max ack delay (the next one soon makes it due), as packetlink decides. */
static int ack_rides(const Reliable *r, int64_t now) {
    return r->eliciting && (r->eliciting_gap >= MAX_ACK_DELAY_NS || ack_due(r, now));
}

/* The ack frame owed, its line written at `out`; what is owed starts again from nothing. */
static int ack_line(Reliable *r, int64_t now, char *out, size_t cap) {
    int n = snprintf(out, cap, "{\"type\":\"ack\",\"ranges\":[");
    for (int i = r->ranges - 1; i >= 0; i--)
        n += snprintf(out + n, cap - (size_t)n, "%s[%lld,%lld]", i == r->ranges - 1 ? "" : ",",
                      (long long)r->highs[i], (long long)r->lows[i]);
    long long delay = (now - r->largest_at) / 1000000;
    n += snprintf(out + n, cap - (size_t)n, "],\"delay\":%lld}\n", delay > 0 ? delay : 0);
    r->eliciting = 0;
    r->ack_deadline = INT64_MAX;
    acks_sent++;
    return n;
}

/* The unacked frames `items` (indexes) in as few new packets as fit (one at most if `one`),
 * the ack owed in the first if `ack`; with no items, a packet of the ack alone. */
static void send_reliable(Client *c, const size_t *items, size_t count, int ack, int one,
                          int64_t now) {
    Reliable *r = c->rel;
    char packet[MAX_PACKET_BYTES + FRAME_BYTES + 1024];
    size_t i = 0;
    do {
        int len = snprintf(packet, sizeof packet, "{\"pn\":%lld,\"session\":\"%s\"}\n",
                           (long long)c->next_pn, c->token);
        if (ack && r->eliciting) len += ack_line(r, now, packet + len, sizeof packet - (size_t)len);
        ack = 0;
        int frames = 0;
        for (; i < count; i++, frames++) {
            Outgoing *o = &r->unacked[items[i]];
            if (frames && len + o->len + 1 > MAX_PACKET_BYTES) break;
            memcpy(packet + len, o->text, (size_t)o->len);
            packet[len + o->len] = '\n';
            len += o->len + 1;
            o->pn = c->next_pn;
            o->sent_ns = now;
        }
        c->next_pn++;
        if (frames) r->last_eliciting_ns = now;
        send_datagram(c, packet, (size_t)len);
    } while (i < count && !one);
    arm(deadline_of(r));
}

/* A new frame: kept until acknowledged, sent at once with the ack owed if it rides. */
static void send_reliably(Client *c, const char *frame, int len, int64_t now) {
    Reliable *r = c->rel;
    if (len >= FRAME_BYTES) die("client %d: a frame of %d bytes", c->index, len);
    if (r->n_unacked == r->cap_unacked) {
        r->cap_unacked = r->cap_unacked ? 2 * r->cap_unacked : 16;
        r->unacked = xrealloc(r->unacked, r->cap_unacked * sizeof *r->unacked);
    }
    size_t item = r->n_unacked++;
    memcpy(r->unacked[item].text, frame, (size_t)len);
    r->unacked[item].len = len;
    send_reliable(c, &item, 1, ack_rides(r, now), 0, now);
}

/* Resend the unacked frames `items` (lost, or a probe's) in new packets. */
static void resend(Client *c, const size_t *items, size_t count, int one, int64_t now) {
    retransmitted += (int64_t)count;
    send_reliable(c, items, count, ack_rides(c->rel, now), one, now);
}

/* A probe timeout sends the oldest frames again, a packet's worth, and backs off; an ack due
 * goes alone. */
static void on_timers(Client *c, int64_t now) {
    Reliable *r = c->rel;
    if (now >= probe_deadline(r)) {
        static size_t items[PROBE_FRAMES]; /* more than a packet holds */
        size_t count = r->n_unacked < PROBE_FRAMES ? r->n_unacked : PROBE_FRAMES;
        for (size_t i = 0; i < count; i++) items[i] = i;
        r->probes++;
        resend(c, items, count, 1, now);
    }
    if (ack_due(r, now)) send_reliable(c, NULL, 0, 1, 0, now);
    arm(deadline_of(r));
}

/* A UDP client frame: `body` is a JSON object without its closing brace; 1.0 adds the token
 * and the next seq, a raw packet session puts it with its seq in a packet of its own, a
 * reliable one keeps it until acknowledged. */
static void send_udp_frame(Client *c, const char *body) {
    char out[512];
    if (c->rel) {
        int size = snprintf(out, sizeof out, "%s,\"seq\":%lld}", body, (long long)c->next_seq++);
        send_reliably(c, out, size, now_ns());
        return;
    }
    int size = opt.packets
                   ? snprintf(out, sizeof out, "{\"pn\":%lld,\"session\":\"%s\"}\n%s,\"seq\":%lld}\n",
                              (long long)c->next_pn++, c->token, body, (long long)c->next_seq)
                   : snprintf(out, sizeof out, "%s,\"session\":\"%s\",\"seq\":%lld}", body,
                              c->token, (long long)c->next_seq);
    c->next_seq++;
    send_datagram(c, out, (size_t)size);
}

/* A packet session proves its address with a ping, again each second until a packet comes. */
static void prove(Client *c, int64_t now) {
    send_udp_frame(c, "{\"type\":\"ping\"");
    c->proof_due = now + PROOF_INTERVAL_NS;
}

static void send_say(Client *c, int64_t slot) {
    char frame[256];
    int64_t k = slot / opt.n, sched = due(slot);
    if (opt.udp) {
        snprintf(frame, sizeof frame, "{\"type\":\"say\",\"text\":\"#%d:%lld:%lld\"", c->index,
                 (long long)k, (long long)sched);
        mark_sent(slot);
        send_udp_frame(c, frame);
        return;
    }
    int size = opt.raw ? snprintf(frame, sizeof frame, "#%d:%lld:%lld", c->index, (long long)k,
                                  (long long)sched)
                       : snprintf(frame, sizeof frame, "{\"type\":\"say\",\"text\":\"#%d:%lld:%lld",
                                  c->index, (long long)k, (long long)sched);
    const char *tail = opt.raw ? "\n" : "\"}\n";
    size_t need = (size_t)size + padding_len + strlen(tail);
    if (c->out_off && c->out_off > c->out_cap / 2) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
    }
    if (c->out_len + need > c->out_cap) {
        c->out_cap = 2 * (c->out_len + need) + 4096;
        c->out = xrealloc(c->out, c->out_cap);
    }
    int was_empty = c->out_len == c->out_off;
    memcpy(c->out + c->out_len, frame, (size_t)size);
    memcpy(c->out + c->out_len + size, padding, padding_len);
    memcpy(c->out + c->out_len + size + padding_len, tail, strlen(tail));
    c->out_len += need;
    c->queued_bytes += (int64_t)need;
    if (c->q_len == c->q_cap) {
        size_t cap = c->q_cap ? 2 * c->q_cap : 16;
        Queued *queue = xalloc(cap * sizeof *queue);
        for (size_t i = 0; i < c->q_len; i++) queue[i] = c->queue[(c->q_head + i) % c->q_cap];
        free(c->queue);
        c->queue = queue;
        c->q_head = 0;
        c->q_cap = cap;
    }
    c->queue[(c->q_head + c->q_len) % c->q_cap] = (Queued){slot, c->queued_bytes};
    c->q_len++;
    if (was_empty) flush(c);
}

static int64_t next_slot; /* the next slot to send */

/* Send every slot due by `now`, in order; a client whose bytes wait is watched for EPOLLOUT. */
static void send_due(int ep, int64_t now) {
    for (; next_slot < nslots && due(next_slot) <= now; next_slot++) {
        Client *c = &clients[next_slot % opt.n];
        int was_blocked = blocked(c);
        send_say(c, next_slot);
        if (due(next_slot) >= start_ns) push(&lags, now_ns() - due(next_slot));
        if (blocked(c) && !was_blocked && !c->watching_out && c->open) set_watch(ep, c, 1);
    }
}

/* ---- receiving ---- */

/* The slot a scheduled time belongs to, or -1 if no message sent so far has it. */
static int64_t slot_of(int64_t sched) {
    int64_t d = sched - t0;
    if (d < 0 || d >= end_ns - t0) return -1;
    int64_t slot = (d * opt.n + opt.period - 1) / opt.period;
    if (slot >= nslots || due(slot) != sched) return -1;
    if (!(sent_bits[slot >> 3] & (1 << (slot & 7)))) return -1;
    return slot;
}

static void on_marker(Client *c, int64_t sched, int valid, int64_t now) {
    int64_t slot = valid ? slot_of(sched) : -1;
    if (slot < 0) {
        unexpected++;
        return;
    }
    if (c->seen[slot >> 3] & (1 << (slot & 7))) {
        duplicates++;
        return;
    }
    c->seen[slot >> 3] |= (uint8_t)(1 << (slot & 7));
    int sender = (int)(slot % opt.n);
    if (sched < c->newest[sender])
        reorders++;
    else
        c->newest[sender] = sched;
    if (sched >= start_ns && sched < end_ns) push(&latencies, now - sched);
}

static int digits(const char *p, const char *end) {
    int count = 0;
    while (p + count < end && p[count] >= '0' && p[count] <= '9') count++;
    return count;
}

/* How the server tells a sender its message was refused (a server past what it can carry on
 * Redis refuses new messages rather than queue them): counted, as benchmarks.cluster counts. */
#define REFUSAL "\"code\":\"rate_limited\""
static int64_t refused;

/* The markers #<digits>:<digits>:<digits> of whole lines that arrived at `now`, found left to
 * right without overlap, as benchmarks.clients.markers finds them. */
static void take_lines(Client *c, const char *data, size_t len, int64_t now) {
    const char *p = data, *end = data + len;
    int64_t found = 0;
    if (!c->too_slow_ns && memmem(data, len, "\"too_slow\"", 10)) c->too_slow_ns = now;
    for (const char *r = data; (r = memmem(r, (size_t)(end - r), REFUSAL, sizeof REFUSAL - 1));
         r += sizeof REFUSAL - 1)
        refused++;
    while ((p = memchr(p, '#', (size_t)(end - p))) != NULL) {
        received_marks++;
        const char *q = p + 1;
        int a = digits(q, end);
        if (!a || q + a >= end || q[a] != ':') {
            p++;
            continue;
        }
        q += a + 1;
        int b = digits(q, end);
        if (!b || q + b >= end || q[b] != ':') {
            p++;
            continue;
        }
        q += b + 1;
        int s = digits(q, end);
        if (!s) {
            p++;
            continue;
        }
        int64_t sched = 0;
        int valid = s <= 18;
        for (int i = 0; valid && i < s; i++) sched = sched * 10 + (q[i] - '0');
        found++;
        on_marker(c, sched, valid, now);
        /* a '#' inside the match is not a marker's start, but Python counts every '#' */
        for (const char *r = p + 1; r < q + s; r++) received_marks += *r == '#';
        p = q + s;
    }
    if (now >= start_ns && now < end_ns) in_window += found;
}

/* ---- reliable packet sessions: receiving ---- */

/* Record packet number `pn` in the ranges an ack lists, at most MAX_ACK_RANGES: past that the
 * lowest is forgotten (common.protocol.rangeset). A repeat never comes here. */
static void ranges_add(Reliable *r, int64_t pn) {
    int n = r->ranges, i = n - 1;
    while (i >= 0 && r->lows[i] > pn) i--;
    if (i >= 0 && pn == r->highs[i] + 1) {
        r->highs[i] = pn;
        if (i + 1 < n && pn + 1 == r->lows[i + 1]) { /* the gap closed: join the next */
            r->highs[i] = r->highs[i + 1];
            memmove(r->lows + i + 1, r->lows + i + 2, (size_t)(n - i - 2) * sizeof *r->lows);
            memmove(r->highs + i + 1, r->highs + i + 2, (size_t)(n - i - 2) * sizeof *r->highs);
            r->ranges--;
        }
        return;
    }
    if (i + 1 < n && pn + 1 == r->lows[i + 1]) {
        r->lows[i + 1] = pn;
        return;
    }
    memmove(r->lows + i + 2, r->lows + i + 1, (size_t)(n - i - 1) * sizeof *r->lows);
    memmove(r->highs + i + 2, r->highs + i + 1, (size_t)(n - i - 1) * sizeof *r->highs);
    r->lows[i + 1] = r->highs[i + 1] = pn;
    if (++n > MAX_ACK_RANGES) {
        memmove(r->lows, r->lows + 1, (size_t)(n - 1) * sizeof *r->lows);
        memmove(r->highs, r->highs + 1, (size_t)(n - 1) * sizeof *r->highs);
        n--;
    }
    r->ranges = n;
}

/* A new packet number: an ack is due at the second packet needing one, or 25 ms (less the
 * slack packetlink allows a late timer) after the first. */
static void on_packet_number(Reliable *r, int64_t pn, int largest, int eliciting, int64_t now) {
    ranges_add(r, pn);
    if (largest) r->largest_at = now;
    if (!eliciting) return;
    r->eliciting_gap = now - r->eliciting_at;
    r->eliciting_at = now;
    r->eliciting++;
    if (r->ack_deadline > now + MAX_ACK_DELAY_NS - ACK_TIMER_SLACK_NS)
        r->ack_deadline = now + MAX_ACK_DELAY_NS - ACK_TIMER_SLACK_NS;
}

/* RFC 9002, 5.3: the ack delay (at most the max) comes off a sample that stays >= min RTT. */
static void rtt_sample(Reliable *r, int64_t latest, int64_t ack_delay) {
    r->latest_rtt = latest;
    if (!r->has_rtt) {
        r->has_rtt = 1;
        r->min_rtt = r->srtt = latest;
        r->rttvar = latest / 2;
        return;
    }
    if (latest < r->min_rtt) r->min_rtt = latest;
    if (ack_delay > MAX_ACK_DELAY_NS) ack_delay = MAX_ACK_DELAY_NS;
    int64_t adjusted = latest >= r->min_rtt + ack_delay ? latest - ack_delay : latest;
    r->rttvar = (3 * r->rttvar + llabs(r->srtt - adjusted)) / 4;
    r->srtt = (7 * r->srtt + adjusted) / 8;
}

static int acked_by(int64_t pn, const int64_t *his, const int64_t *los, int count) {
    for (int i = 0; i < count; i++)
        if (pn <= his[i] && pn >= los[i]) return 1;
    return 0;
}

/* The server's ack of our packets ([HI,LO] largest first): the frames it carried are let go,
 * the RTT sampled on the largest, and a frame is lost once a packet sent 3 or more after its
 * own, or 9/8 of max(smoothed, latest RTT) after it, was acknowledged: sent again at once. */
static void on_ack(Client *c, const int64_t *his, const int64_t *los, int count, int64_t delay_ms,
                   int64_t now) {
    Reliable *r = c->rel;
    if (!count || his[0] >= c->next_pn) return; /* names a packet never sent: ignored */
    int64_t sampled = -1;
    size_t kept = 0, before = r->n_unacked;
    for (size_t i = 0; i < r->n_unacked; i++) {
        Outgoing *o = &r->unacked[i];
        if (acked_by(o->pn, his, los, count)) {
            if (o->pn == his[0]) sampled = o->sent_ns;
            continue;
        }
        if (kept != i) r->unacked[kept] = *o;
        kept++;
    }
    r->n_unacked = kept;
    if (kept == before) return;
    r->probes = 0;
    if (his[0] > r->largest_acked) r->largest_acked = his[0];
    if (sampled >= 0) rtt_sample(r, now - sampled, delay_ms * 1000000);
    int64_t rtt = r->srtt > r->latest_rtt ? r->srtt : r->latest_rtt;
    int64_t loss_delay = rtt * 9 / 8 > GRANULARITY_NS ? rtt * 9 / 8 : GRANULARITY_NS;
    static size_t lost[PROBE_FRAMES];
    size_t n_lost = 0;
    for (size_t i = 0; i < r->n_unacked && n_lost < PROBE_FRAMES; i++) {
        const Outgoing *o = &r->unacked[i];
        if (o->pn < r->largest_acked && (r->largest_acked - o->pn >= PACKET_THRESHOLD ||
                                         now - o->sent_ns >= loss_delay))
            lost[n_lost++] = i;
    }
    if (n_lost) resend(c, lost, n_lost, 0, now);
}

/* An ack frame's ranges (at most MAX_ACK_RANGES kept) and delay; 0 if it is not one. */
static int parse_ack(const char *p, const char *end, int64_t *his, int64_t *los, int64_t *delay) {
    static const char ranges[] = "\"ranges\":[", delay_key[] = "\"delay\":";
    const char *at = memmem(p, (size_t)(end - p), ranges, sizeof ranges - 1);
    const char *d = memmem(p, (size_t)(end - p), delay_key, sizeof delay_key - 1);
    if (!at || !d) return 0;
    int count = 0;
    for (p = at + sizeof ranges - 1; p < end && *p == '['; p++) {
        int64_t pair[2];
        p++;
        for (int k = 0; k < 2; k++) {
            int n = digits(p, end);
            if (!n || n > 18 || p + n >= end || p[n] != (k ? ']' : ',')) return 0;
            pair[k] = strtoll(p, NULL, 10);
            p += n + 1;
        }
        if (count < MAX_ACK_RANGES) his[count] = pair[0], los[count++] = pair[1];
        if (p >= end || *p != ',') break;
    }
    d += sizeof delay_key - 1;
    if (!digits(d, end)) return 0;
    *delay = strtoll(d, NULL, 10);
    return count;
}

static char *delivered;
static size_t delivered_len, delivered_cap;

static void deliver(const char *line, size_t len) {
    if (delivered_len + len + 1 > delivered_cap) {
        delivered_cap = 2 * (delivered_len + len + 1) + 65536;
        delivered = xrealloc(delivered, delivered_cap);
    }
    memcpy(delivered + delivered_len, line, len);
    delivered[delivered_len + len] = '\n';
    delivered_len += len + 1;
}

/* A frame's seq, read off its end ("seq":N}, where the server puts it); -1 if none. */
static int64_t seq_of(const char *line, size_t len) {
    static const char key[] = "\"seq\":";
    if (len < sizeof key + 1 || line[len - 1] != '}') return -1;
    const char *p = line + len - 1;
    while (p > line && p[-1] >= '0' && p[-1] <= '9') p--;
    if (p == line + len - 1 || line + len - 1 - p > 18 || p - line < (long)sizeof key - 1 ||
        memcmp(p - (sizeof key - 1), key, sizeof key - 1))
        return -1;
    return strtoll(p, NULL, 10);
}

/* Hand frames on by seq, once and in order: an early one (within RECEIVE_WINDOW) is held, one
 * seen before or too far ahead is dropped (the server sends it again). */
static void on_frame(Reliable *r, int64_t seq, const char *line, size_t len) {
    if (seq < r->expected || seq >= r->expected + RECEIVE_WINDOW) return;
    size_t slot = (size_t)(seq % RECEIVE_WINDOW);
    if (seq > r->expected) {
        if (!r->held[slot]) {
            r->held[slot] = xalloc(len);
            memcpy(r->held[slot], line, len);
            r->held_len[slot] = len;
        }
        return;
    }
    deliver(line, len);
    for (slot = (size_t)(++r->expected % RECEIVE_WINDOW); r->held[slot];
         slot = (size_t)(++r->expected % RECEIVE_WINDOW)) {
        deliver(r->held[slot], r->held_len[slot]);
        free(r->held[slot]);
        r->held[slot] = NULL;
    }
}

/* The frames of a reliable packet (after its header, `pn` new): acks taken, frames handed on
 * in order and their markers counted, an ack sent alone if one is due. */
static void take_reliable(Client *c, int64_t pn, int largest, const char *p, const char *end,
                          int64_t now) {
    static const char ack[] = "{\"type\":\"ack\"";
    Reliable *r = c->rel;
    int eliciting = 0; /* a frame other than an ack */
    for (const char *q = p; q && q < end && !eliciting;) {
        eliciting = (size_t)(end - q) < sizeof ack - 1 || memcmp(q, ack, sizeof ack - 1);
        q = memchr(q, '\n', (size_t)(end - q));
        if (q) q++;
    }
    on_packet_number(r, pn, largest, eliciting, now);
    delivered_len = 0;
    while (p < end) {
        const char *newline = memchr(p, '\n', (size_t)(end - p));
        const char *stop = newline ? newline : end;
        size_t len = (size_t)(stop - p);
        int64_t his[MAX_ACK_RANGES], los[MAX_ACK_RANGES], delay;
        if (len >= sizeof ack - 1 && !memcmp(p, ack, sizeof ack - 1)) {
            int count = parse_ack(p, stop, his, los, &delay);
            if (count) on_ack(c, his, los, count, delay, now);
        } else if (len) {
            int64_t seq = seq_of(p, len);
            if (seq > 0) on_frame(r, seq, p, len);
        }
        p = stop + 1;
    }
    if (delivered_len) take_lines(c, delivered, delivered_len, now);
    if (ack_due(r, now)) send_reliable(c, NULL, 0, 1, 0, now);
    arm(deadline_of(r));
}

/* One packet of a packet session: a welcome again, a datagram that is no packet, a number
 * seen before or too far off are dropped; the frames of the others are taken as lines. */
static void take_packet(Client *c, const char *data, size_t len, int64_t now) {
    static const char welcome[] = "{\"type\":\"welcome\"", head[] = "{\"pn\":";
    if (len >= sizeof welcome - 1 && !memcmp(data, welcome, sizeof welcome - 1)) return;
    if (len < sizeof head - 1 || memcmp(data, head, sizeof head - 1)) return;
    const char *end = data + len, *p = data + sizeof head - 1;
    int d = digits(p, end);
    if (!d || d > 18) return;
    int64_t pn = 0;
    for (int i = 0; i < d; i++) pn = pn * 10 + (p[i] - '0');
    const char *newline = memchr(p, '\n', (size_t)(end - p));
    if (!newline || newline + 1 == end) return; /* a packet holds at least one frame */
    if (c->packets_received && llabs(pn - c->largest_pn) >= PN_WINDOW) return;
    if (pn >= MAX_PN) return;
    size_t byte = (size_t)(pn >> 3);
    if (byte >= c->pns_bytes) {
        size_t size = 2 * byte + 4096;
        c->pns = xrealloc(c->pns, size);
        memset(c->pns + c->pns_bytes, 0, size - c->pns_bytes);
        c->pns_bytes = size;
    }
    if (c->pns[byte] & (1 << (pn & 7))) return;
    c->pns[byte] |= (uint8_t)(1 << (pn & 7));
    int largest = !c->packets_received || pn > c->largest_pn;
    if (largest) c->largest_pn = pn;
    c->packets_received++;
    c->proof_due = 0;
    if (c->rel)
        take_reliable(c, pn, largest, newline + 1, end, now);
    else
        take_lines(c, newline + 1, (size_t)(end - newline - 1), now);
}

static char *recv_buffer;

/* Read one chunk; 0 when the connection is over. */
static int on_readable(Client *c) {
    size_t kept = c->pending_len;
    memcpy(recv_buffer, c->pending, kept);
    ssize_t size = recv(c->fd, recv_buffer + kept, opt.udp ? DATAGRAM_BYTES : RECV_BYTES,
                        MSG_DONTWAIT);
    if (size < 0)
        /* refused: an ICMP error from an earlier send; the next datagram may be fine */
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ||
               (opt.udp && errno == ECONNREFUSED);
    if (size == 0 && !opt.udp) return 0;
    int64_t now = now_ns();
    if (opt.udp) {
        if (opt.packets && c->token[0])
            take_packet(c, recv_buffer, (size_t)size, now);
        else if (size)
            take_lines(c, recv_buffer, (size_t)size, now);
        return 1;
    }
    size_t total = kept + (size_t)size, cut = total;
    while (cut > 0 && recv_buffer[cut - 1] != '\n') cut--;
    size_t rest = total - cut;
    if (rest > MAX_PENDING) die("client %d: a line longer than %d bytes", c->index, MAX_PENDING);
    memcpy(c->pending, recv_buffer + cut, rest);
    c->pending_len = rest;
    if (cut) take_lines(c, recv_buffer, cut, now);
    return 1;
}

/* ---- connecting ---- */

static int open_socket(void) {
    int type = opt.udp ? SOCK_DGRAM : SOCK_STREAM;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = type}, *found;
    int error = getaddrinfo(opt.host, opt.port, &hints, &found);
    if (error) die("%s:%s: %s", opt.host, opt.port, gai_strerror(error));
    int fd = socket(found->ai_family, type, 0);
    if (fd < 0) die("socket: %s", strerror(errno));
    if (opt.udp) {
        int size = UDP_BUFFER_BYTES;
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    }
    struct timeval timeout = {.tv_sec = CONNECT_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    if (connect(fd, found->ai_addr, found->ai_addrlen) < 0)
        die("connect to %s:%s: %s", opt.host, opt.port, strerror(errno));
    freeaddrinfo(found);
    int one = 1;
    if (!opt.udp) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void send_all(int fd, const char *data, size_t len) {
    while (len) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) die("send while joining: %s", strerror(errno));
        data += n;
        len -= (size_t)n;
    }
}

/* Say hello as c<index> and wait for the welcome; what follows it is kept as pending. */
static void join_json(Client *c) {
    char line[64];
    int size = snprintf(line, sizeof line, "{\"type\":\"hello\",\"name\":\"c%d\"}\n", c->index);
    send_all(c->fd, line, (size_t)size);
    size_t len = 0;
    char *newline = NULL;
    while (!newline) {
        if (len == MAX_PENDING) die("client %d: no line end before %d bytes", c->index, MAX_PENDING);
        ssize_t n = recv(c->fd, recv_buffer + len, MAX_PENDING - len, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) die("client %d: waiting for welcome: %s", c->index, strerror(errno));
        if (n == 0) die("client %d: server closed before welcome", c->index);
        len += (size_t)n;
        newline = memchr(recv_buffer, '\n', len);
    }
    *newline = 0;
    if (!strstr(recv_buffer, "\"type\":\"welcome\""))
        die("client %d: expected welcome, got %s", c->index, recv_buffer);
    c->pending_len = len - (size_t)(newline + 1 - recv_buffer);
    memcpy(c->pending, newline + 1, c->pending_len);
}

/* The indexes i of every c<i> followed by a non-digit in `text`; adds them but `self` to
 * known and returns whether there was any. */
static int heard_joins(const char *text, size_t len, int self, uint8_t *known) {
    int any = 0;
    for (size_t i = 0; i < len; i++) {
        if (text[i] != 'c') continue;
        int d = digits(text + i + 1, text + len);
        if (!d || i + 1 + d >= len) continue;
        long index = 0;
        for (int j = 0; j < d && index <= opt.n; j++) index = index * 10 + (text[i + 1 + j] - '0');
        if (index != self && index < opt.n) {
            known[index] = 1;
            any = 1;
        }
        i += (size_t)d + 1; /* with the loop's i++, the next search starts after the match */
    }
    return any;
}

/* Raw text: every client gives its name; each is in the room once it heard of someone's join
 * or someone heard of its own. */
static void join_raw(void) {
    char line[32];
    for (int i = 0; i < opt.n; i++) {
        int size = snprintf(line, sizeof line, "c%d\n", i);
        send_all(clients[i].fd, line, (size_t)size);
    }
    if (opt.n < 2) return;
    uint8_t *known = xalloc((size_t)opt.n);
    char(*tails)[16] = xalloc((size_t)opt.n * 16);
    size_t *tail_len = xalloc((size_t)opt.n * sizeof *tail_len);
    struct pollfd *fds = xalloc((size_t)opt.n * sizeof *fds);
    char *heard = xalloc(16 + 65536);
    for (int i = 0; i < opt.n; i++) fds[i] = (struct pollfd){.fd = clients[i].fd, .events = POLLIN};
    int64_t deadline = now_ns() + CONNECT_TIMEOUT_S * 1000000000LL;
    for (;;) {
        int count = 0;
        for (int i = 0; i < opt.n; i++) count += known[i];
        if (count == opt.n) break;
        int64_t left = deadline - now_ns();
        int ready = left > 0 ? poll(fds, (nfds_t)opt.n, (int)(left / 1000000)) : 0;
        if (ready < 0 && errno == EINTR) continue;
        if (ready <= 0) die("%d raw text clients never joined", opt.n - count);
        for (int i = 0; i < opt.n; i++) {
            if (!fds[i].revents) continue;
            memcpy(heard, tails[i], tail_len[i]);
            ssize_t n = recv(fds[i].fd, heard + tail_len[i], 65536, 0);
            if (n <= 0) die("the server closed client %d as it joined", i);
            size_t len = tail_len[i] + (size_t)n;
            if (heard_joins(heard, len, i, known)) known[i] = 1;
            tail_len[i] = len < 16 ? len : 16;
            memcpy(tails[i], heard + len - tail_len[i], tail_len[i]);
        }
    }
    free(known);
    free(tails);
    free(tail_len);
    free(fds);
    free(heard);
}

/* A reliable packet session's state at its welcome, which was seq 1 of the server's frames. */
static Reliable *start_reliable(void) {
    Reliable *r = xalloc(sizeof *r);
    r->expected = 2;
    r->held = xalloc(RECEIVE_WINDOW * sizeof *r->held);
    r->held_len = xalloc(RECEIVE_WINDOW * sizeof *r->held_len);
    r->ack_deadline = INT64_MAX;
    r->eliciting_at = INT64_MIN / 2;
    r->largest_acked = -1;
    r->srtt = INITIAL_RTT_NS;
    r->rttvar = INITIAL_RTT_NS / 2;
    return r;
}

/* UDP: every hello at once, then again each second to those still without a welcome, five
 * times at most; the token is read off the welcome. */
static void join_udp(void) {
    char line[64];
    struct pollfd *fds = xalloc((size_t)opt.n * sizeof *fds);
    for (int i = 0; i < opt.n; i++) fds[i] = (struct pollfd){.fd = clients[i].fd, .events = POLLIN};
    for (int try = 0; try < HELLO_TRIES; try++) {
        int waiting = 0;
        for (int i = 0; i < opt.n; i++) {
            if (clients[i].token[0]) continue;
            waiting++;
            int size = snprintf(line, sizeof line, "{\"type\":\"hello\",\"name\":\"c%d\"%s%s}", i,
                                opt.reliable ? ",\"reliable\":true" : "",
                                opt.packets ? ",\"packets\":true" : "");
            send_datagram(&clients[i], line, (size_t)size);
        }
        if (!waiting) break;
        int64_t deadline = now_ns() + 1000000000LL;
        while (waiting) {
            int64_t left = deadline - now_ns();
            int ready = left > 0 ? poll(fds, (nfds_t)opt.n, (int)(left / 1000000)) : 0;
            if (ready < 0 && errno == EINTR) continue;
            if (ready <= 0) break;
            for (int i = 0; i < opt.n; i++) {
                if (!fds[i].revents) continue;
                ssize_t n = recv(fds[i].fd, recv_buffer, DATAGRAM_BYTES, MSG_DONTWAIT);
                if (n <= 0) continue;
                if (opt.packets && clients[i].token[0]) {
                    take_packet(&clients[i], recv_buffer, (size_t)n, now_ns());
                    continue;
                }
                recv_buffer[n] = 0;
                const char *at = strstr(recv_buffer, "\"session\":\"");
                if (clients[i].token[0] || strncmp(recv_buffer, "{\"type\":\"welcome\"", 17) || !at)
                    continue;
                at += 11;
                size_t len = strspn(at, "0123456789abcdef");
                if (!len || len >= sizeof clients[i].token) continue;
                memcpy(clients[i].token, at, len);
                clients[i].token[len] = 0;
                waiting--;
                if (opt.packets && !strstr(recv_buffer, "\"packets\":true"))
                    die("client %d: the server did not grant a packet session", i);
                if (opt.reliable) clients[i].rel = start_reliable();
                if (opt.packets) prove(&clients[i], now_ns());
            }
        }
    }
    int missing = 0;
    for (int i = 0; i < opt.n; i++) missing += !clients[i].token[0];
    if (missing) die("%d of %d UDP clients got no welcome", missing, opt.n);
    free(fds);
}

static void connect_all(void) {
    clients = xalloc((size_t)opt.n * sizeof *clients);
    for (int i = 0; i < opt.n; i++) {
        Client *c = &clients[i];
        c->index = i;
        c->open = 1;
        c->pending = xalloc(MAX_PENDING);
        c->newest = xalloc((size_t)opt.n * sizeof *c->newest);
        for (int j = 0; j < opt.n; j++) c->newest[j] = -1;
        c->next_seq = 1;
        c->fd = open_socket();
        if (!opt.raw && !opt.udp) join_json(c);
    }
    if (opt.raw) join_raw();
    if (opt.udp) join_udp();
    for (int i = 0; i < opt.n; i++) {
        int flags = fcntl(clients[i].fd, F_GETFL);
        fcntl(clients[i].fd, F_SETFL, flags | O_NONBLOCK);
    }
}

/* ---- the run ---- */

static int cmp64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest rank, as benchmarks.measure._percentile_ms: sorted[max(1, ceil(f * n)) - 1]. */
static void print_ranks(const char *name, Vec *v, const double *fractions, int count) {
    qsort(v->items, v->len, sizeof *v->items, cmp64);
    printf("\"%s\":[", name);
    for (int i = 0; i < count && v->len; i++) {
        double rank = ceil(fractions[i] * (double)v->len);
        size_t r = rank < 1 ? 1 : (size_t)rank;
        printf("%s%lld", i ? "," : "", (long long)v->items[r - 1]);
    }
    printf("]");
}

static void parse_args(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *key = argv[i];
        if (i + 1 >= argc) die("%s needs a value", key);
        const char *value = argv[++i];
        if (!strcmp(key, "--mode")) {
            if (strcmp(value, "json") && strcmp(value, "raw") && strcmp(value, "udp") &&
                strcmp(value, "packets") && strcmp(value, "reliable-packets"))
                die("--mode is json, raw, udp, packets or reliable-packets");
            opt.raw = !strcmp(value, "raw");
            opt.reliable = !strcmp(value, "reliable-packets");
            opt.packets = opt.reliable || !strcmp(value, "packets");
            opt.udp = opt.packets || !strcmp(value, "udp");
        } else if (!strcmp(key, "--host")) {
            opt.host = value;
        } else if (!strcmp(key, "--port")) {
            opt.port = value;
        } else if (!strcmp(key, "--clients")) {
            opt.n = atoi(value);
        } else if (!strcmp(key, "--period-ns")) {
            opt.period = atoll(value);
        } else if (!strcmp(key, "--warmup-ns")) {
            opt.warmup = atoll(value);
        } else if (!strcmp(key, "--duration-ns")) {
            opt.duration = atoll(value);
        } else if (!strcmp(key, "--drain-ns")) {
            opt.drain = atoll(value);
        } else if (!strcmp(key, "--lead-ns")) {
            opt.lead = atoll(value);
        } else if (!strcmp(key, "--pad")) {
            opt.pad = atoi(value);
        } else if (!strcmp(key, "--server-pid")) {
            opt.server_pid = atol(value);
        } else if (!strcmp(key, "--also-pid")) {
            if (opt.nalso == MAX_ALSO_PIDS) die("at most %d --also-pid", MAX_ALSO_PIDS);
            opt.also_pids[opt.nalso++] = atol(value);
        } else if (!strcmp(key, "--fractions")) {
            char *p = (char *)value;
            while (*p && opt.nfractions < MAX_FRACTIONS) {
                opt.fractions[opt.nfractions++] = strtod(p, &p);
                if (*p == ',') p++;
            }
        } else {
            die("unknown option %s", key);
        }
    }
    if (!opt.port) die("--port is needed");
    if (opt.n < 1 || opt.period < opt.n) die("need clients >= 1 and period-ns >= clients");
    if (opt.duration <= 0 || opt.warmup < 0 || opt.drain < 0 || opt.pad < 0)
        die("need duration > 0, warmup >= 0, drain >= 0, pad >= 0");
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    struct rlimit files;
    if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
        files.rlim_cur = files.rlim_max;
        setrlimit(RLIMIT_NOFILE, &files);
    }
    padding_len = opt.pad ? (size_t)opt.pad + 1 : 0;
    padding = xalloc(padding_len + 1);
    if (opt.pad) {
        padding[0] = ' ';
        memset(padding + 1, 'x', (size_t)opt.pad);
    }
    recv_buffer = xalloc(RECV_BYTES + MAX_PENDING);

    progress("connecting");
    int64_t connect_start = now_ns();
    connect_all();
    double connect_s = (now_ns() - connect_start) / 1e9;

    t0 = now_ns() + opt.lead;
    start_ns = t0 + opt.warmup;
    end_ns = start_ns + opt.duration;
    /* slots due before t: ceil((t - t0) * N / P) */
    nslots = ((end_ns - t0) * opt.n + opt.period - 1) / opt.period;
    int64_t slots_before_start = ((start_ns - t0) * opt.n + opt.period - 1) / opt.period;
    int64_t offered = nslots - slots_before_start;
    sent_bits = xalloc((size_t)(nslots / 8 + 1));
    for (int i = 0; i < opt.n; i++) clients[i].seen = xalloc((size_t)(nslots / 8 + 1));

    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1: %s", strerror(errno));
    for (int i = 0; i < opt.n; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, clients[i].fd, &ev) < 0)
            die("epoll_ctl: %s", strerror(errno));
    }

    int64_t window_start = 0, window_end = 0, drain_deadline = 0, drain_marks = 0, drain_change = 0;
    long long ticks_start = 0, ticks_end = 0;
    double cpu_start = 0, cpu_end = 0;
    int open_count = opt.n;
    int64_t next_proof_check = 0;
    int64_t next_progress = start_ns + PROGRESS_NS, last_marks = 0, last_progress = start_ns;
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int64_t now = now_ns();
        if (!window_start && now >= start_ns) {
            ticks_start = server_ticks();
            cpu_start = own_cpu_s();
            window_start = now_ns();
            last_marks = received_marks;
        }
        send_due(ep, now);
        if (opt.packets && now >= next_proof_check) {
            next_proof_check = now + PROOF_INTERVAL_NS / 10;
            for (int i = 0; i < opt.n; i++)
                if (clients[i].proof_due && now >= clients[i].proof_due) prove(&clients[i], now);
        }
        if (opt.reliable && now >= next_timer) {
            next_timer = INT64_MAX;
            for (int i = 0; i < opt.n; i++)
                if (clients[i].rel) on_timers(&clients[i], now);
        }
        if (window_start && !window_end && now >= end_ns) {
            ticks_end = server_ticks();
            cpu_end = own_cpu_s();
            window_end = now_ns();
            drain_deadline = end_ns + opt.drain;
            drain_marks = received_marks;
            drain_change = window_end;
            progress("draining");
        }
        if (window_start && !window_end && now >= next_progress) {
            double rate = (received_marks - last_marks) / ((now - last_progress) / 1e9);
            progress("%4.1f/%g s, %.0f deliveries/s", (now - start_ns) / 1e9, opt.duration / 1e9,
                     rate);
            last_marks = received_marks;
            last_progress = now;
            next_progress = now + PROGRESS_NS;
        }
        if (window_end) {
            int any_blocked = 0;
            for (int i = 0; i < opt.n && !any_blocked; i++) any_blocked = blocked(&clients[i]);
            if (received_marks != drain_marks) drain_marks = received_marks, drain_change = now;
            if (now >= drain_deadline || !open_count ||
                (received_marks >= sent_total * recipients() && !any_blocked) ||
                (opt.udp && !opt.reliable && now - drain_change >= QUIET_NS))
                break;
        }
        int64_t wake = now + IDLE_WAIT_NS;
        if (next_slot < nslots && due(next_slot) < wake) wake = due(next_slot);
        if (!window_start && start_ns < wake) wake = start_ns;
        if (!window_end && end_ns < wake) wake = end_ns;
        if (window_end && drain_deadline < wake) wake = drain_deadline;
        if (window_end && opt.udp && !opt.reliable && drain_change + QUIET_NS < wake)
            wake = drain_change + QUIET_NS;
        if (next_timer < wake) wake = next_timer;
        if (opt.packets && next_proof_check < wake) wake = next_proof_check;
        if (!window_end && window_start && next_progress < wake) wake = next_progress;
        int64_t wait = wake - now_ns();
        if (wait < 0) wait = 0;
        struct timespec timeout = {.tv_sec = wait / 1000000000LL, .tv_nsec = wait % 1000000000LL};
        int ready = epoll_pwait2(ep, events, MAX_EVENTS, &timeout, NULL);
        if (ready < 0) {
            if (errno == EINTR) continue;
            die("epoll_pwait2: %s", strerror(errno));
        }
        for (int e = 0; e < ready; e++) {
            /* a send due while a burst is read leaves now, not after the burst */
            if (e && next_slot < nslots && due(next_slot) <= now_ns()) send_due(ep, now_ns());
            Client *c = &clients[events[e].data.u32];
            if (!c->open) continue;
            if (events[e].events & EPOLLOUT) {
                flush(c);
                if (!blocked(c)) set_watch(ep, c, 0);
            }
            if (!(events[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
            if (!on_readable(c)) {
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                c->open = 0;
                open_count--;
            }
        }
    }
    /* the server's peaks and threads after the drain, before the clients leave */
    long long peak_kb = server_status("VmHWM"), threads = server_status("Threads");
    for (int i = 0; i < opt.n; i++) {
        Client *c = &clients[i];
        if (opt.udp)
            send_udp_frame(c, "{\"type\":\"bye\"");
        else if (!opt.raw && c->out_len == c->out_off)
            send(c->fd, "{\"type\":\"bye\"}\n", 15, MSG_NOSIGNAL | MSG_DONTWAIT);
        shutdown(c->fd, SHUT_RDWR);
        close(c->fd);
    }

    int64_t too_slow_seen = 0, too_slow_first = INT64_MAX;
    for (int i = 0; i < opt.n; i++) {
        if (!clients[i].too_slow_ns) continue;
        too_slow_seen++;
        if (clients[i].too_slow_ns < too_slow_first) too_slow_first = clients[i].too_slow_ns;
    }
    printf("{\"connect_s\":%.9f,\"wall_s\":%.9f,\"harness_cpu_s\":%.6f,", connect_s,
           (window_end - window_start) / 1e9, cpu_end - cpu_start);
    printf("\"server_cpu_ticks\":%lld,\"clock_ticks_per_s\":%ld,",
           opt.server_pid > 0 ? ticks_end - ticks_start : -1LL, sysconf(_SC_CLK_TCK));
    printf("\"server_peak_rss_kb\":%lld,\"server_threads\":%lld,", peak_kb, threads);
    int64_t packets_received = 0;
    for (int i = 0; i < opt.n; i++) packets_received += clients[i].packets_received;
    printf("\"send_errors\":%lld,\"packets_received\":%lld,", (long long)send_errors,
           (long long)packets_received);
    printf("\"acks_sent\":%lld,\"retransmitted\":%lld,", (long long)acks_sent,
           (long long)retransmitted);
    printf("\"offered\":%lld,\"sent\":%lld,\"in_window\":%lld,\"received\":%zu,",
           (long long)offered, (long long)sent_in_window, (long long)in_window, latencies.len);
    printf("\"duplicates\":%lld,\"reorders\":%lld,\"unexpected\":%lld,", (long long)duplicates,
           (long long)reorders, (long long)unexpected);
    printf("\"refused\":%lld,", (long long)refused);
    printf("\"too_slow_seen\":%lld,\"too_slow_after_ns\":%lld,", (long long)too_slow_seen,
           too_slow_seen ? (long long)(too_slow_first - t0) : -1LL);
    print_ranks("latency_ns", &latencies, opt.fractions, opt.nfractions);
    static const double lag_fractions[] = {0.5, 0.99};
    printf(",");
    print_ranks("lag_ns", &lags, lag_fractions, 2);
    printf("}\n");
    return 0;
}
