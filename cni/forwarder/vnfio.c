/*
 * vnfio: the CNI executable a container runtime execs on the node, for every pod.
 *
 * It does what cni/client.py does and nothing more: send the CNI environment, stdin, the opened pod netns and
 * its own mount namespace (SCM_RIGHTS; delegated IPAM plugins run in that one) to vnfio-cni-daemon over its unix
 * socket, with the same wire format and ACCEPTED/GO handshake (see the docstring of cni/client.py), and print the
 * daemon's answer. A request larger than the daemon takes goes straight to the fallback below. Static (musl), so a node needs nothing
 * but the kernel; a Python start costs ~6 ms, this ~0.3 ms.
 *
 * When no daemon takes the request (absent, refusing, not accepting within VNFIO_CNI_TIMEOUT seconds), or it
 * dies after GO on a command that is safe to repeat (not ADD), it execs vnfio-inproc from its own directory
 * (the Python zipapp, which does the work in-process) with the same environment and the same stdin: stdin was
 * read whole (the request needs its length), so it is handed over as a memfd on fd 0. Without that file it
 * answers CNI error 11 (try again), or 50 for STATUS. VERSION and unknown commands are answered here.
 *
 * Build: python -m ziglang cc -target x86_64-linux-musl -static -Os -Wall -Wextra -o vnfio vnfio.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/vnfio/cni.sock"
#define MAGIC "VNFIO-CNI/2\n"
#define FD_NETNS 0x1u /* request flags: which fds ride along, in this order (cni/client.py) */
#define FD_MOUNT_NS 0x2u
#define MAX_ENV (256u << 10) /* what the daemon accepts (cni/client.py); larger runs in-process */
#define MAX_STDIN (1u << 20)
#define MAX_CONFIG (16u << 20) /* larger is refused (code 6) */
#define MAX_REPLY (16u << 20)
#define CURRENT "1.1.0"
#define NSFS_MAGIC 0x6e736673
#define NS_GET_NSTYPE 0xb703 /* _IO(0xb7, 0x3): answered by nsfs files only */
#define NEWNET 0x40000000    /* CLONE_NEWNET */

extern char **environ;
static const char *const SUPPORTED[] = {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"};

static const char HELP[] =
    "usage: vnfio            (run by a container runtime as a CNI plugin)\n\n"
    "The vnfio CNI plugin (type \"vnfio\"): wires a pod network namespace as a veth pair, a macvlan or a veth\n"
    "into a bridge, with host-local, static or delegated IPAM. It speaks CNI 1.1.0 and 1.0.0 (results\n"
    "converted to 0.3.x/0.4.0 on request). Parameters come from CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS,\n"
    "CNI_IFNAME, CNI_ARGS and CNI_PATH; the network configuration from standard input; the result goes to\n"
    "standard output. Try: CNI_COMMAND=VERSION vnfio\n\n"
    "The work is done by the node daemon vnfio-cni-daemon when it listens on /run/vnfio/cni.sock (override with\n"
    "VNFIO_CNI_SOCKET); without it, this executable hands the request to vnfio-inproc in its own directory (the\n"
    "same code run by the host's python3) if that is installed, else answers CNI error 11 (try again).\n"
    "VNFIO_CNI_TIMEOUT (seconds, default 5) bounds how long the daemon may take to accept a request.\n";

struct buf {
    char *p;
    size_t len, cap;
};

static void put(struct buf *b, const void *data, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            static const char oom[] = "{\"cniVersion\": \"" CURRENT "\", \"code\": 999, \"msg\": \"out of memory\"}\n";
            if (write(1, oom, sizeof oom - 1) < 0) { /* nothing left to tell anyone */
            }
            _exit(1);
        }
        b->p = p, b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

/* ---- JSON text the way Python's json.dumps writes it (ensure_ascii), so answers match cni.skel's byte for byte */

static void put_unit(struct buf *b, unsigned u)
{
    char tmp[8];
    const char *esc = u == '"' ? "\\\"" : u == '\\' ? "\\\\" : u == '\n' ? "\\n" : u == '\r' ? "\\r"
                    : u == '\t' ? "\\t" : u == '\b' ? "\\b" : u == '\f' ? "\\f" : NULL;
    if (esc)
        puts_(b, esc);
    else if (u < 0x20 || u >= 0x7f)
        put(b, tmp, (size_t)snprintf(tmp, sizeof tmp, "\\u%04x", u));
    else
        tmp[0] = (char)u, put(b, tmp, 1);
}

static void put_codepoint(struct buf *b, uint32_t cp)
{
    if (cp > 0xffff) {
        cp -= 0x10000;
        put_unit(b, 0xd800 + (cp >> 10));
        put_unit(b, 0xdc00 + (cp & 0x3ff));
    } else {
        put_unit(b, cp);
    }
}

/* One UTF-8 sequence at s[0..n): its length, or 0 if invalid. Surrogates pass (Python's "surrogatepass"). */
static size_t utf8(const unsigned char *s, size_t n, uint32_t *cp)
{
    static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
    size_t len = s[0] < 0x80 ? 1 : (s[0] & 0xe0) == 0xc0 ? 2 : (s[0] & 0xf0) == 0xe0 ? 3 : (s[0] & 0xf8) == 0xf0 ? 4 : 0;
    if (!len || len > n)
        return 0;
    uint32_t c = len == 1 ? s[0] : s[0] & (0x7f >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        c = c << 6 | (s[i] & 0x3f);
    }
    if (c < min[len] || c > 0x10ffff)
        return 0;
    *cp = c;
    return len;
}

/* Bytes from the environment as a JSON string body: what os.environ (surrogateescape) then json.dumps make of them. */
static void put_text(struct buf *b, const char *text)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t n = strlen(text);
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t len = utf8(s + i, n - i, &cp);
        if (len && !(cp >= 0xd800 && cp < 0xe000))
            put_codepoint(b, cp), i += len;
        else
            put_unit(b, 0xdc00 + s[i++]);
    }
}

/* ---- the part of json.loads that VERSION needs: is stdin valid JSON, and its top-level "cniVersion" string */

struct scan {
    const unsigned char *s;
    size_t n, i;
};

static void ws(struct scan *c)
{
    while (c->i < c->n && (c->s[c->i] == ' ' || c->s[c->i] == '\t' || c->s[c->i] == '\n' || c->s[c->i] == '\r'))
        c->i++;
}

static int lit(struct scan *c, const char *word)
{
    size_t len = strlen(word);
    if (c->n - c->i < len || memcmp(c->s + c->i, word, len))
        return 0;
    c->i += len;
    return 1;
}

static int digits(struct scan *c)
{
    size_t start = c->i;
    while (c->i < c->n && c->s[c->i] >= '0' && c->s[c->i] <= '9')
        c->i++;
    return c->i > start;
}

/* A string at c->i (the opening quote); its text re-encoded into `out` (may be NULL). Input is valid UTF-8. */
static int string(struct scan *c, struct buf *out)
{
    if (c->i >= c->n || c->s[c->i++] != '"')
        return 0;
    while (c->i < c->n) {
        unsigned char ch = c->s[c->i];
        uint32_t cp;
        if (ch == '"')
            return c->i++, 1;
        if (ch < 0x20)
            return 0; /* strict: raw control characters are not allowed */
        if (ch == '\\') {
            if (c->i + 1 >= c->n)
                return 0;
            char e = (char)c->s[c->i + 1];
            const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t", *at = strchr(from, e);
            if (e && at) {
                if (out)
                    put_unit(out, (unsigned char)to[at - from]);
                c->i += 2;
                continue;
            }
            if (e != 'u' || c->n - c->i < 6)
                return 0;
            unsigned u = 0;
            for (int k = 2; k < 6; k++) {
                unsigned char h = c->s[c->i + k];
                int v = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10
                      : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
                if (v < 0)
                    return 0;
                u = u << 4 | (unsigned)v;
            }
            if (out)
                put_unit(out, u); /* pairs of \u escapes come out as the same pair again */
            c->i += 6;
            continue;
        }
        size_t len = utf8(c->s + c->i, c->n - c->i, &cp);
        if (out)
            put_codepoint(out, cp);
        c->i += len;
    }
    return 0;
}

enum { NOT_STRING = -1 };

/* A value; at depth 0 an object's "cniVersion" is kept in `version` (len NOT_STRING if it is not a string). */
static int value(struct scan *c, int depth, struct buf *version, long *vlen)
{
    if (depth > 500 || c->i >= c->n)
        return 0;
    unsigned char ch = c->s[c->i];
    if (ch == '"')
        return string(c, NULL);
    if (ch == '{' || ch == '[') {
        unsigned char close = ch == '{' ? '}' : ']';
        c->i++;
        ws(c);
        if (c->i < c->n && c->s[c->i] == close)
            return c->i++, 1;
        for (;;) {
            int is_version = 0;
            if (ch == '{') {
                struct buf key = {0};
                int ok = string(c, &key);
                is_version = ok && depth == 0 && key.len == 10 && !memcmp(key.p, "cniVersion", 10);
                free(key.p);
                ws(c);
                if (!ok || c->i >= c->n || c->s[c->i++] != ':')
                    return 0;
                ws(c);
            }
            if (is_version && c->i < c->n && c->s[c->i] == '"') {
                version->len = 0; /* the last duplicate key wins, as in a Python dict */
                if (!string(c, version))
                    return 0;
                *vlen = (long)version->len;
            } else {
                if (is_version)
                    *vlen = NOT_STRING;
                if (!value(c, depth + 1, NULL, NULL))
                    return 0;
            }
            ws(c);
            if (c->i >= c->n)
                return 0;
            if (c->s[c->i] == close)
                return c->i++, 1;
            if (c->s[c->i++] != ',')
                return 0;
            ws(c);
        }
    }
    if (lit(c, "null") || lit(c, "true") || lit(c, "false") || lit(c, "NaN") || lit(c, "Infinity") ||
        lit(c, "-Infinity"))
        return 1;
    if (ch == '-')
        c->i++;
    if (c->i < c->n && c->s[c->i] == '0')
        c->i++;
    else if (!digits(c))
        return 0;
    if (c->i + 1 < c->n && c->s[c->i] == '.' && c->s[c->i + 1] >= '0' && c->s[c->i + 1] <= '9')
        c->i++, digits(c);
    if (c->i < c->n && (c->s[c->i] == 'e' || c->s[c->i] == 'E')) {
        size_t at = c->i++;
        if (c->i < c->n && (c->s[c->i] == '+' || c->s[c->i] == '-'))
            c->i++;
        if (!digits(c))
            c->i = at; /* "1e" is the number 1 followed by extra data */
    }
    return 1;
}

/* The config's cniVersion as JSON string text (json.loads(stdin).get("cniVersion") when a non-empty str), or
 * NULL. UTF-16/32 input, which json.loads also detects, is taken as having none. */
static const char *stdin_version(const struct buf *in, struct buf *version)
{
    struct scan c = {(const unsigned char *)in->p, in->len, 0};
    long vlen = 0;
    uint32_t cp;
    if (c.n >= 3 && !memcmp(c.s, "\xef\xbb\xbf", 3))
        c.i = 3;
    for (size_t i = c.i; i < c.n;) {
        size_t len = utf8(c.s + i, c.n - i, &cp);
        if (!len)
            return NULL;
        i += len;
    }
    ws(&c);
    if (c.i < c.n && c.s[c.i] != '{') /* valid or not, only an object has a version */
        return NULL;
    if (!value(&c, 0, version, &vlen))
        return NULL;
    ws(&c);
    return c.i == c.n && vlen > 0 ? version->p : NULL;
}

/* ---- answers */

static int answer(int code, const char *out, size_t len)
{
    while (len) {
        ssize_t n = write(1, out, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        out += n, len -= (size_t)n;
    }
    return code;
}

/* A CNI error: {"cniVersion": ..., "code": ..., "msg": ...} as cni.errors.CniError.to_json writes it. */
static int fail(const char *version, int code, const char *msg)
{
    struct buf b = {0};
    char num[16];
    puts_(&b, "{\"cniVersion\": \"");
    puts_(&b, version);
    put(&b, num, (size_t)snprintf(num, sizeof num, "\", \"code\": %d", code));
    puts_(&b, ", \"msg\": \"");
    put_text(&b, msg);
    puts_(&b, "\"}\n");
    return answer(1, b.p, b.len);
}

/* The version an error of the skeleton is printed at: the config's when it is one we speak, else ours. */
static const char *error_version(const char *given)
{
    for (size_t k = 0; given && k < sizeof SUPPORTED / sizeof *SUPPORTED; k++)
        if (!strcmp(given, SUPPORTED[k]))
            return given;
    return CURRENT;
}

static char *format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *format(const char *fmt, ...)
{
    char *text = NULL;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&text, fmt, ap) < 0)
        text = "(out of memory)";
    va_end(ap);
    return text; /* never freed: the process is short-lived */
}

/* Python's repr() of a str, near enough for messages: the quotes cni.skel puts around paths and names. */
static char *repr(const char *s)
{
    static char out[2][4200];
    static int next;
    char *o = out[next++ & 1], *p = o;
    char q = strchr(s, '\'') && !strchr(s, '"') ? '"' : '\'';
    *p++ = q;
    for (; *s && p < o + sizeof out[0] - 6; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '\\' || ch == (unsigned char)q)
            *p++ = '\\', *p++ = (char)ch;
        else if (ch < 0x20 || ch == 0x7f)
            p += sprintf(p, ch == '\n' ? "\\n" : ch == '\t' ? "\\t" : ch == '\r' ? "\\r" : "\\x%02x", ch);
        else
            *p++ = (char)ch;
    }
    *p++ = q, *p = 0;
    return o;
}

static void read_all(int fd, struct buf *b, size_t limit)
{
    char chunk[65536];
    while (b->len <= limit) {
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        put(b, chunk, (size_t)n);
    }
}

/* ---- the pod netns: opened here, so the daemon needs neither hostPID nor the runtime's view of the path */

enum { NETNS_NONE, NETNS_OPEN, NETNS_GONE, NETNS_BAD };

/* Open CNI_NETNS without side effects on whatever it names (never a device's open, never a blocking FIFO) and
 * check it is a network namespace other than our own; `why` says what is wrong otherwise. */
static int open_netns(const char *path, int *fd, const char **why)
{
    struct stat st, own;
    struct statfs fs;
    if (!path || !*path)
        return NETNS_NONE;
    if (stat(path, &st) != 0) {
        *why = errno == ENOENT ? format("netns %s does not exist", repr(path))
                               : format("failed to open netns %s: %s", repr(path), strerror(errno));
        return errno == ENOENT ? NETNS_GONE : NETNS_BAD;
    }
    *why = format("%s is not a network namespace", repr(path));
    if (!S_ISREG(st.st_mode)) /* nsfs files are regular files; devices, FIFOs and sockets are not opened */
        return NETNS_BAD;
    *fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (*fd < 0) {
        *why = format("failed to open netns %s: %s", repr(path), strerror(errno));
        return errno == ENOENT ? NETNS_GONE : NETNS_BAD;
    }
    if (fstatfs(*fd, &fs) != 0 || fs.f_type != NSFS_MAGIC || ioctl(*fd, NS_GET_NSTYPE) != NEWNET)
        return close(*fd), *fd = -1, NETNS_BAD;
    if (fstat(*fd, &st) == 0 && stat("/proc/self/ns/net", &own) == 0 && st.st_dev == own.st_dev &&
        st.st_ino == own.st_ino) {
        *why = format("netns %s is the plugin's own network namespace", repr(path));
        return close(*fd), *fd = -1, NETNS_BAD;
    }
    return NETNS_OPEN;
}

/* ---- the daemon */

enum { SERVED, NOT_FORWARDED, REFUSED, LOST };

struct reply {
    uint32_t code;
    struct buf out;
    const char *why;
};

static uint32_t be32(const unsigned char *p) { return (uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]; }

static void put_be32(struct buf *b, uint32_t v)
{
    unsigned char p[4] = {v >> 24, v >> 16, v >> 8, v};
    put(b, p, 4);
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

/* Wait until `fd` is ready for `events` or the deadline passes (deadline < 0: no deadline). */
static int wait_for(int fd, short events, long long deadline)
{
    struct pollfd p = {fd, events, 0};
    for (;;) {
        long long left = deadline < 0 ? -1 : deadline - now_ms();
        int n = poll(&p, 1, deadline < 0 ? -1 : left < 0 ? 0 : left > INT_MAX ? INT_MAX : (int)left);
        if (n > 0)
            return 0;
        if (n == 0)
            return errno = ETIMEDOUT, -1;
        if (errno != EINTR)
            return -1;
    }
}

/* Exactly `n` bytes, or -1 (errno set; 0 for the peer closing first). */
static int recv_exact(int sock, void *to, size_t n, long long deadline)
{
    char *p = to;
    while (n) {
        if (wait_for(sock, POLLIN, deadline) != 0)
            return -1;
        ssize_t got = recv(sock, p, n, MSG_DONTWAIT);
        if (got < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (got <= 0)
            return errno = got ? errno : 0, -1;
        p += got, n -= (size_t)got;
    }
    return 0;
}

static const char *err(void) { return errno ? strerror(errno) : "connection closed"; }

static int forward(const char *sock_path, const struct buf *req, const int *fds, int nfds, double timeout,
                   struct reply *r)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    long long deadline = timeout >= 0 && timeout < 1e9 ? now_ms() + (long long)(timeout * 1000) : -1;
    unsigned char head[8], status;
    size_t sent = 0;
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int result = NOT_FORWARDED;
    if (sock < 0) {
        r->why = format("no daemon at %s: socket: %s", sock_path, strerror(errno));
        return NOT_FORWARDED;
    }
    if (strlen(sock_path) >= sizeof addr.sun_path) {
        r->why = format("no daemon at %s: the path is too long for a unix socket", sock_path);
        goto out;
    }
    strcpy(addr.sun_path, sock_path);
    /* A unix socket connects at once or fails; EAGAIN means a full backlog: retry until the deadline. */
    while (connect(sock, (struct sockaddr *)&addr, sizeof addr) != 0) {
        if (errno == EINTR || (errno == EAGAIN && (deadline < 0 || now_ms() < deadline))) {
            struct timespec pause = {0, 1000000};
            nanosleep(&pause, NULL);
            continue;
        }
        r->why = format("no daemon at %s: connect: %s", sock_path, errno == EAGAIN ? "timed out" : strerror(errno));
        goto out;
    }
    /* The request; the fds ride on its first byte. A daemon that refuses us may close before reading it all
     * (EPIPE): its answer is still there to read. */
    while (sent < req->len) {
        union {
            struct cmsghdr h;
            char space[CMSG_SPACE(2 * sizeof(int))];
        } control = {0};
        struct iovec iov = {req->p + sent, req->len - sent};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
        if (sent == 0 && nfds > 0) {
            msg.msg_control = control.space, msg.msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int));
            struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
            c->cmsg_level = SOL_SOCKET, c->cmsg_type = SCM_RIGHTS, c->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
            memcpy(CMSG_DATA(c), fds, (size_t)nfds * sizeof(int));
        }
        ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            sent += (size_t)n;
        } else if (errno == EPIPE || errno == ECONNRESET) {
            break;
        } else if (errno != EINTR && (errno != EAGAIN || wait_for(sock, POLLOUT, deadline) != 0)) {
            r->why = format("no daemon at %s: send: %s", sock_path, strerror(errno));
            goto out;
        }
    }
    if (recv_exact(sock, &status, 1, deadline) != 0) {
        r->why = format("no daemon at %s: %s", sock_path, errno == ETIMEDOUT ? "timed out" : err());
        goto out;
    }
    if (status == 'R') {
        char text[4097] = "";
        uint32_t size = recv_exact(sock, head, 4, deadline) == 0 ? be32(head) : 0;
        size = size > 4096 ? 4096 : size;
        if (recv_exact(sock, text, size, deadline) != 0)
            text[0] = 0;
        text[size] = 0;
        r->why = format("the daemon refused: %s", text);
        result = REFUSED;
        goto out;
    }
    if (status != 'A' || send(sock, "G", 1, MSG_NOSIGNAL) != 1) {
        r->why = format("no daemon at %s: %s", sock_path, status != 'A' ? "not a vnfio daemon" : strerror(errno));
        goto out;
    }
    /* Committed: the daemon may be running it now, so wait for the answer however long it takes. */
    result = LOST;
    if (recv_exact(sock, head, 8, -1) != 0) {
        r->why = format("the daemon at %s went away during the request: %s", sock_path, err());
        goto out;
    }
    r->code = be32(head);
    uint32_t size = be32(head + 4);
    r->out.len = 0;
    put(&r->out, "", 0);
    if (size > MAX_REPLY) {
        r->why = format("the daemon at %s sent an answer of %u bytes", sock_path, size);
        goto out;
    }
    while (r->out.len < size) {
        char chunk[65536];
        size_t want = size - r->out.len > sizeof chunk ? sizeof chunk : size - r->out.len;
        if (recv_exact(sock, chunk, want, -1) != 0) {
            r->why = format("the daemon at %s went away during the request: %s", sock_path, err());
            goto out;
        }
        put(&r->out, chunk, want);
    }
    result = SERVED;
out:
    close(sock);
    return result;
}

/* ---- the Python fallback */

/* Exec vnfio-inproc beside this executable with our environment and the stdin we read (as a memfd on fd 0).
 * Returns only if that is impossible, with the reason in `why`. */
static void hand_over(const char *argv0, const struct buf *in, const char **why)
{
    char self[PATH_MAX], path[PATH_MAX + 16];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0)
        self[n] = 0;
    else
        snprintf(self, sizeof self, "%s", argv0);
    char *slash = strrchr(self, '/');
    snprintf(path, sizeof path, "%.*s/vnfio-inproc", slash ? (int)(slash - self) : 1, slash ? self : ".");
    if (access(path, X_OK) != 0) {
        *why = format("no in-process fallback %s: %s", path, strerror(errno));
        return;
    }
    int fd = memfd_create("vnfio-stdin", MFD_CLOEXEC);
    size_t done = 0;
    while (fd >= 0 && done < in->len) {
        ssize_t w = write(fd, in->p + done, in->len - done);
        if (w <= 0 && errno != EINTR)
            break;
        done += w > 0 ? (size_t)w : 0;
    }
    if (fd < 0 || done < in->len || lseek(fd, 0, SEEK_SET) != 0 || dup2(fd, 0) != 0 ||
        (fd == 0 && fcntl(0, F_SETFD, 0) != 0)) { /* dup2 onto itself keeps FD_CLOEXEC */
        *why = format("cannot hand stdin to %s: %s", path, strerror(errno));
        return;
    }
    if (fd != 0)
        close(fd);
    char *args[] = {path, "--in-process", NULL};
    execve(path, args, environ);
    *why = format("the in-process fallback %s cannot run: %s", path, strerror(errno));
}

int main(int argc, char **argv)
{
    static const char *const FORWARDED[] = {"ADD", "DEL", "CHECK", "GC", "STATUS"};
    struct buf in = {0}, version = {0}, req = {0};
    struct reply reply = {0};
    const char *command = getenv("CNI_COMMAND"), *why = "";
    int forwarded = 0, netns_fd = -1;

    for (int k = 1; k < argc; k++)
        if (!strcmp(argv[k], "-h") || !strcmp(argv[k], "--help"))
            return answer(0, HELP, sizeof HELP - 1);
    if (!command || !*command) {
        fputs("vnfio CNI plugin, supports CNI versions 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0\n", stderr);
        return 0;
    }
    for (size_t k = 0; k < sizeof FORWARDED / sizeof *FORWARDED; k++)
        forwarded |= !strcmp(command, FORWARDED[k]);
    read_all(0, &in, MAX_CONFIG);
    const char *given = stdin_version(&in, &version);
    if (!strcmp(command, "VERSION")) {
        struct buf b = {0};
        puts_(&b, "{\"cniVersion\": \"");
        puts_(&b, given ? given : CURRENT);
        puts_(&b, "\", \"supportedVersions\": [\"0.3.0\", \"0.3.1\", \"0.4.0\", \"1.0.0\", \"1.1.0\"]}\n");
        return answer(0, b.p, b.len);
    }
    if (!forwarded)
        return fail(error_version(given), 4,
                    format("CNI_COMMAND: unknown command %s, expected one of ADD, DEL, CHECK, GC, STATUS, VERSION",
                           repr(command)));
    if (in.len > MAX_CONFIG)
        return fail(error_version(given), 6, "failed to decode the network config on stdin: larger than 16 MiB");

    /* ADD and CHECK need a usable netns; DEL does not: it releases IPAM without one, so an unusable CNI_NETNS
     * is left out of the request (the daemon never opens a path itself). GC and STATUS do not use it. */
    int is_del = !strcmp(command, "DEL"), netns = NETNS_NONE;
    if (is_del || !strcmp(command, "ADD") || !strcmp(command, "CHECK")) {
        netns = open_netns(getenv("CNI_NETNS"), &netns_fd, &why);
        if ((netns == NETNS_GONE || netns == NETNS_BAD) && !is_del)
            return fail(error_version(given), netns == NETNS_GONE ? 3 : 8, why);
    }

    /* MAGIC, u32 flags, u32 env length, u32 stdin length, env ("K=V" joined by NUL), stdin */
    size_t env_len = 0, count = 0;
    for (char **e = environ; *e; e++) {
        if (netns >= NETNS_GONE && !strncmp(*e, "CNI_NETNS=", 10))
            continue;
        env_len += strlen(*e) + (count++ ? 1 : 0);
    }
    /* Our mount namespace: the daemon runs delegated IPAM plugins in it, so they see the node as the runtime does. */
    int mnt_fd = open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC), fds[2], nfds = 0;
    if (netns_fd >= 0)
        fds[nfds++] = netns_fd;
    if (mnt_fd >= 0)
        fds[nfds++] = mnt_fd;
    puts_(&req, MAGIC);
    put_be32(&req, (netns_fd >= 0 ? FD_NETNS : 0) | (mnt_fd >= 0 ? FD_MOUNT_NS : 0));
    put_be32(&req, (uint32_t)env_len);
    put_be32(&req, (uint32_t)in.len);
    count = 0;
    for (char **e = environ; *e; e++) {
        if (netns >= NETNS_GONE && !strncmp(*e, "CNI_NETNS=", 10))
            continue;
        if (count++)
            put(&req, "", 1);
        puts_(&req, *e);
    }
    put(&req, in.p, in.len);

    const char *sock_path = getenv("VNFIO_CNI_SOCKET"), *t = getenv("VNFIO_CNI_TIMEOUT");
    char *end = NULL;
    double timeout = t && *t ? strtod(t, &end) : 5.0;
    while (end && (*end == ' ' || *end == '\t' || *end == '\n'))
        end++;
    if (end && (*end || !(timeout >= 0)))
        timeout = 5.0; /* unparsable or negative: the default, as cni.client */
    sock_path = sock_path && *sock_path ? sock_path : DEFAULT_SOCKET;

    int how = NOT_FORWARDED;
    if (env_len > MAX_ENV || in.len > MAX_STDIN) /* more than the daemon buffers for anyone: do it in-process */
        reply.why = format("the request (environment %zu bytes, config %zu bytes) is larger than the daemon takes "
                           "(%u and %u)", env_len, in.len, MAX_ENV, MAX_STDIN);
    else
        how = forward(sock_path, &req, fds, nfds, timeout, &reply);
    if (netns_fd >= 0)
        close(netns_fd);
    if (mnt_fd >= 0)
        close(mnt_fd);
    if (how == SERVED)
        return answer((int)(reply.code & 0xff), reply.out.p, reply.out.len);
    const char *try_again = given ? given : CURRENT;
    if (how == LOST && !strcmp(command, "ADD")) {
        fprintf(stderr, "vnfio: %s\n", reply.why);
        return fail(try_again, 11, format("%s; the ADD may be half done, retry after DEL", reply.why));
    }
    if (how == REFUSED)
        fprintf(stderr, "vnfio: %s; running in-process\n", reply.why);
    hand_over(argv[0], &in, &why);
    fprintf(stderr, "vnfio: %s; %s\n", reply.why, why);
    if (!strcmp(command, "STATUS"))
        return fail(try_again, 50, format("vnfio-cni-daemon is not serving (%s) and %s", reply.why, why));
    return fail(try_again, 11, format("%s, and %s: try again once vnfio-cni-daemon runs", reply.why, why));
}
