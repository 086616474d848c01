/*
 * fuzz_resp.c - a fuzz target for the RESP2 request parser (daemon/resp.c).
 *
 * The input is the byte stream of one connection. For each of two sets of
 * small limits, LLVMFuzzerTestOneInput
 *  - consumes requests one after another from the whole input, checking
 *    every result: consumed <= len, arguments inside the request or the
 *    parser's inline storage, 1 <= argc <= max_args, storage no larger than
 *    the limits allow, an error message in Redis's style that fits err;
 *    a parsed request decodes the same with an independent decoder, a
 *    complete inline line the parser refuses is refused by that decoder
 *    too, and the arguments written back with the reply writers parse
 *    back unchanged;
 *  - delivers the same stream in pieces (byte by byte when short, and in
 *    pseudo-random chunks), parsing whatever is buffered after each piece
 *    as the daemon does, and requires the same sequence of results: a
 *    request cut anywhere is waited for, never misread. Each call sees only
 *    the bytes delivered so far, at the end of an allocation, so that a
 *    read past them is caught by the address sanitizer.
 * A failed check prints what failed and the input, then aborts.
 *
 * Built with -DSHMKV_LIBFUZZER this is a libFuzzer target. Otherwise main()
 * runs it on each file (or each file in each directory) named on the
 * command line, or, with no arguments, on FUZZ_RUNS (default 200000) inputs
 * made by mutating a built-in corpus of requests with a seeded generator
 * (FUZZ_SEED, default 1): deterministic, so that it runs in `make test`
 * with gcc alone. It exits 0 when every check held. `--write-corpus DIR`
 * and `--write-dict FILE` write the built-in corpus and a dictionary of
 * tokens and boundary numbers, to start libFuzzer from.
 */
#include <dirent.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <event2/buffer.h>

#include "resp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct limits {
    size_t max_request_bytes, max_args;
};

/* Small enough that inputs reach them often. */
static const struct limits limit_sets[] = {
    {48, 3},
    {512, 16},
};

#define ERR_CAP 128
#define SMALL_ERR_CAP 8
#define BYTEWISE_MAX 512 /* inputs up to this long are also fed 1 by 1 */
#define PROTO_PREFIX "Protocol error: "

/* The input being checked, for the failure report. */
static const uint8_t *current_data;
static size_t current_size;
static const struct limits *current_limits;
static const char *current_pass = "";

#ifndef SHMKV_LIBFUZZER
static bool driver_generated;
static unsigned long long driver_seed;
static unsigned long driver_run;
#endif

static void print_escaped(FILE *out, const uint8_t *data, size_t size)
{
    size_t shown = size < 4096 ? size : 4096;
    for (size_t i = 0; i < shown; i++) {
        uint8_t c = data[i];
        if (c == '\r')
            fputs("\\r", out);
        else if (c == '\n')
            fputs("\\n", out);
        else if (c == '"' || c == '\\')
            fprintf(out, "\\%c", c);
        else if (c >= 32 && c < 127)
            fputc(c, out);
        else
            fprintf(out, "\\x%02x\"\"", c);
    }
    if (shown < size)
        fprintf(out, "...(%zu more bytes)", size - shown);
}

static void fail(const char *fmt, ...)
    __attribute__((noreturn, format(printf, 1, 2)));

static void fail(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "fuzz_resp: check failed (%s): ", current_pass);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (current_limits != NULL)
        fprintf(stderr, "limits: max_request_bytes %zu, max_args %zu\n",
                current_limits->max_request_bytes, current_limits->max_args);
    fprintf(stderr, "input, %zu bytes: \"", current_size);
    print_escaped(stderr, current_data, current_size);
    fputs("\"\n", stderr);
#ifndef SHMKV_LIBFUZZER
    if (driver_generated)
        fprintf(stderr, "generated input %lu of FUZZ_SEED=%llu\n", driver_run,
                driver_seed);
#endif
    abort();
}

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        if (!(cond))                                                           \
            fail(__VA_ARGS__);                                                 \
    } while (0)

static uint64_t fnv1a(uint64_t h, const void *data, size_t len)
{
    const uint8_t *b = data;
    for (size_t i = 0; i < len; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t args_hash(size_t argc, const struct resp_arg *argv)
{
    uint64_t h = fnv1a(0xcbf29ce484222325ull, &argc, sizeof argc);
    for (size_t i = 0; i < argc; i++) {
        h = fnv1a(h, &argv[i].len, sizeof argv[i].len);
        h = fnv1a(h, argv[i].data, argv[i].len);
    }
    return h;
}

/* ---- an independent decoder ---- */

/* Reads "<prefix><integer>\r\n" at buf[*pos]: an optional '-' and digits,
 * the value within long long. */
static bool ref_header(const uint8_t *buf, size_t len, size_t *pos,
                       uint8_t prefix, long long *out)
{
    size_t i = *pos;
    if (i >= len || buf[i] != prefix)
        return false;
    i++;
    bool neg = i < len && buf[i] == '-';
    if (neg)
        i++;
    size_t digits = 0;
    unsigned long long v = 0;
    for (; i < len && buf[i] >= '0' && buf[i] <= '9'; i++, digits++) {
        if (v > (unsigned long long)LLONG_MAX / 10)
            return false;
        v = v * 10 + (unsigned)(buf[i] - '0');
    }
    if (digits == 0 || v > (unsigned long long)LLONG_MAX || i + 1 >= len ||
        buf[i] != '\r' || buf[i + 1] != '\n')
        return false;
    *out = neg ? -(long long)v : (long long)v;
    *pos = i + 2;
    return true;
}

/* A multibulk request the parser accepted (RESP_DONE) or skipped
 * (RESP_EMPTY) must decode here to the same arguments and length. */
static void ref_check_multibulk(const uint8_t *buf, size_t len,
                                enum resp_status st, size_t consumed,
                                size_t argc, const struct resp_arg *argv)
{
    size_t pos = 0;
    long long n;
    CHECK(ref_header(buf, len, &pos, '*', &n),
          "accepted a multibulk count the reference decoder refuses");
    if (st == RESP_EMPTY) {
        CHECK(n <= 0, "skipped a multibulk request of %lld arguments", n);
        CHECK(consumed == pos, "skipped %zu bytes of a %zu-byte empty array",
              consumed, pos);
        return;
    }
    CHECK(n >= 1 && (size_t)n == argc, "argc %zu for a count of %lld", argc, n);
    for (size_t i = 0; i < argc; i++) {
        long long blen;
        CHECK(ref_header(buf, len, &pos, '$', &blen) && blen >= 0,
              "argument %zu: accepted a bulk header the reference refuses", i);
        CHECK((unsigned long long)blen <= len - pos &&
                  len - pos - (size_t)blen >= 2,
              "argument %zu: accepted a bulk body past the end", i);
        CHECK(argv[i].data == (const char *)buf + pos &&
                  argv[i].len == (size_t)blen,
              "argument %zu: not the bytes its header describes", i);
        pos += (size_t)blen;
        CHECK(buf[pos] == '\r' && buf[pos + 1] == '\n',
              "argument %zu: accepted without CRLF after the body", i);
        pos += 2;
    }
    CHECK(consumed == pos, "consumed %zu of a %zu-byte request", consumed, pos);
}

static bool is_blank(uint8_t c)
{
    return c == ' ' || c == '\t';
}

static int hex_value(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Splits an inline line by the rules resp.h states: blanks separate;
 * "..." with \n \r \t \b \a \xHH and \<any> escapes; '...' with \' only; a
 * closing quote ends its argument. Decoded bytes go to out (n bytes at
 * least), argument i to starts[i], lens[i] for i < max. Returns the number
 * of arguments, or -1 for unbalanced quotes. */
static long ref_split(const uint8_t *line, size_t n, uint8_t *out,
                      size_t *starts, size_t *lens, size_t max)
{
    size_t i = 0, o = 0;
    long count = 0;
    for (;;) {
        while (i < n && is_blank(line[i]))
            i++;
        if (i == n)
            return count;
        size_t start = o;
        uint8_t quote = 0;
        for (;;) {
            if (i == n) {
                if (quote != 0)
                    return -1;
                break;
            }
            uint8_t c = line[i];
            if (quote == '"') {
                if (c == '\\' && i + 3 < n && line[i + 1] == 'x' &&
                    hex_value(line[i + 2]) >= 0 &&
                    hex_value(line[i + 3]) >= 0) {
                    out[o++] = (uint8_t)(hex_value(line[i + 2]) * 16 +
                                         hex_value(line[i + 3]));
                    i += 4;
                } else if (c == '\\' && i + 1 < n) {
                    static const char from[] = "nrtba", to[] = "\n\r\t\b\a";
                    const char *at = memchr(from, line[i + 1], 5);
                    out[o++] = at ? (uint8_t)to[at - from] : line[i + 1];
                    i += 2;
                } else if (c == '"') {
                    i++;
                    if (i < n && !is_blank(line[i]))
                        return -1;
                    break;
                } else {
                    out[o++] = c;
                    i++;
                }
            } else if (quote == '\'') {
                if (c == '\\' && i + 1 < n && line[i + 1] == '\'') {
                    out[o++] = '\'';
                    i += 2;
                } else if (c == '\'') {
                    i++;
                    if (i < n && !is_blank(line[i]))
                        return -1;
                    break;
                } else {
                    out[o++] = c;
                    i++;
                }
            } else if (is_blank(c)) {
                break;
            } else if (c == '"' || c == '\'') {
                quote = c;
                i++;
            } else {
                out[o++] = c;
                i++;
            }
        }
        if ((size_t)count < max) {
            starts[count] = start;
            lens[count] = o - start;
        }
        count++;
    }
}

/* An inline request with a complete line: the parser's verdict must match
 * the reference split (accepted with the same arguments, or refused for
 * unbalanced quotes, too many arguments or a too long line). */
static void ref_check_inline(const struct limits *lim, const uint8_t *buf,
                             size_t len, enum resp_status st, size_t consumed,
                             size_t argc, const struct resp_arg *argv,
                             const char *err)
{
    const uint8_t *nl = memchr(buf, '\n', len);
    if (nl == NULL) {
        CHECK(st == RESP_INCOMPLETE || st == RESP_TOO_BIG,
              "status %d for an inline line without its newline", st);
        CHECK((st == RESP_TOO_BIG) == (len > lim->max_request_bytes),
              "status %d for %zu bytes without a newline", st, len);
        return;
    }
    size_t line_len = (size_t)(nl - buf);
    CHECK(st != RESP_INCOMPLETE, "incomplete with a whole line");
    CHECK(consumed == line_len + 1, "consumed %zu of a %zu-byte line", consumed,
          line_len + 1);
    if (line_len > lim->max_request_bytes) {
        CHECK(st == RESP_TOO_BIG, "status %d for a %zu-byte line", st,
              line_len);
        return;
    }
    size_t n =
        line_len > 0 && buf[line_len - 1] == '\r' ? line_len - 1 : line_len;
    uint8_t *out = malloc(n + 1);
    size_t *starts = malloc((lim->max_args + 1) * sizeof *starts);
    size_t *lens = malloc((lim->max_args + 1) * sizeof *lens);
    if (out == NULL || starts == NULL || lens == NULL)
        abort();
    long count = ref_split(buf, n, out, starts, lens, lim->max_args);
    if (count < 0) {
        CHECK(st == RESP_PROTO || st == RESP_TOO_BIG,
              "status %d for unbalanced quotes", st);
        CHECK(st == RESP_TOO_BIG ||
                  strcmp(err, "Protocol error: unbalanced quotes in request") ==
                      0,
              "unbalanced quotes reported as '%s'", err);
    } else if ((size_t)count > lim->max_args) {
        CHECK(st == RESP_TOO_BIG, "status %d for %ld arguments", st, count);
    } else if (count == 0) {
        CHECK(st == RESP_EMPTY, "status %d for a blank line", st);
    } else {
        CHECK(st == RESP_DONE, "status %d (%s) for a valid inline request", st,
              err);
        CHECK(argc == (size_t)count, "argc %zu, the reference split %ld", argc,
              count);
        for (size_t i = 0; i < argc; i++)
            CHECK(argv[i].len == lens[i] &&
                      memcmp(argv[i].data, out + starts[i], lens[i]) == 0,
                  "inline argument %zu differs from the reference split", i);
    }
    free(out);
    free(starts);
    free(lens);
}

/* ---- checking one result ---- */

static size_t args_cap_bound(size_t max_args)
{
    return max_args <= 8 ? 8 : 2 * max_args;
}

static void check_result(const struct resp_parser *p, const struct limits *lim,
                         const uint8_t *buf, size_t len, enum resp_status st,
                         size_t consumed, size_t argc,
                         const struct resp_arg *argv, const char *err,
                         size_t err_cap)
{
    CHECK(st == RESP_DONE || st == RESP_INCOMPLETE || st == RESP_EMPTY ||
              st == RESP_PROTO || st == RESP_TOO_BIG,
          "unknown status %d", st);
    CHECK(consumed <= len, "consumed %zu of %zu bytes", consumed, len);
    CHECK(strnlen(err, err_cap) < err_cap, "error message not terminated");
    CHECK(p->args_cap <= args_cap_bound(lim->max_args),
          "%zu argument slots for max_args %zu", p->args_cap, lim->max_args);
    CHECK(p->inline_cap <= lim->max_request_bytes + 1,
          "%zu bytes of inline storage for max_request_bytes %zu",
          p->inline_cap, lim->max_request_bytes);
    switch (st) {
    case RESP_INCOMPLETE:
        CHECK(consumed == 0, "incomplete but consumed %zu", consumed);
        CHECK(argc == 0, "incomplete with %zu arguments", argc);
        CHECK(err[0] == '\0', "incomplete with error '%s'", err);
        break;
    case RESP_EMPTY:
        CHECK(consumed > 0, "empty request of 0 bytes");
        CHECK(argc == 0, "empty request with %zu arguments", argc);
        CHECK(err[0] == '\0', "empty request with error '%s'", err);
        break;
    case RESP_DONE:
        CHECK(consumed > 0, "request of 0 bytes");
        CHECK(argc >= 1 && argc <= lim->max_args, "argc %zu, max_args %zu",
              argc, lim->max_args);
        CHECK(argv == p->args, "argv is not the parser's argument array");
        CHECK(err[0] == '\0', "request with error '%s'", err);
        for (size_t i = 0; i < argc; i++) {
            const char *d = argv[i].data;
            if (buf[0] == '*')
                CHECK(d >= (const char *)buf && argv[i].len <= consumed &&
                          d <= (const char *)buf + consumed - argv[i].len,
                      "argument %zu outside the request", i);
            else
                CHECK(d >= p->inline_buf && argv[i].len <= p->inline_cap &&
                          d <= p->inline_buf + p->inline_cap - argv[i].len,
                      "argument %zu outside the inline storage", i);
        }
        break;
    case RESP_PROTO:
    case RESP_TOO_BIG:
        CHECK(argc == 0, "error with %zu arguments", argc);
        CHECK(strncmp(err, PROTO_PREFIX, strlen(PROTO_PREFIX)) == 0,
              "error message '%s' is not in Redis's style", err);
        break;
    }
    if (len > 0 && buf[0] == '*' && (st == RESP_DONE || st == RESP_EMPTY))
        ref_check_multibulk(buf, len, st, consumed, argc, argv);
    if (len > 0 && buf[0] != '*')
        ref_check_inline(lim, buf, len, st, consumed, argc, argv, err);
}

/* ---- the passes ---- */

struct result {
    enum resp_status status;
    size_t pos; /* where in the stream the request starts */
    size_t consumed, argc;
    uint64_t hash;
    char err[ERR_CAP];
};

struct results {
    struct result *v;
    size_t n, cap;
};

static void results_add(struct results *r, const struct result *one)
{
    if (r->n == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 16;
        struct result *v = realloc(r->v, cap * sizeof *v);
        if (v == NULL)
            abort();
        r->v = v;
        r->cap = cap;
    }
    r->v[r->n++] = *one;
}

/* Writes the arguments back as an array of bulks with the reply writers
 * and parses that: it must give the same arguments. */
static void check_reencoded(struct resp_parser *big, size_t argc,
                            const struct resp_arg *argv)
{
    struct evbuffer *out = evbuffer_new();
    if (out == NULL)
        abort();
    resp_array(out, argc);
    for (size_t i = 0; i < argc; i++)
        resp_bulk(out, argv[i].data, argv[i].len);
    size_t len = evbuffer_get_length(out);
    char *copy = malloc(len);
    if (copy == NULL)
        abort();
    evbuffer_copyout(out, copy, len);
    evbuffer_free(out);
    size_t consumed, argc2;
    struct resp_arg *argv2 = NULL;
    char err[ERR_CAP];
    enum resp_status st =
        resp_parse(big, copy, len, &consumed, &argc2, &argv2, err, sizeof err);
    CHECK(st == RESP_DONE && consumed == len && argc2 == argc,
          "re-encoded request: status %d (%s), %zu of %zu bytes", st, err,
          consumed, len);
    for (size_t i = 0; i < argc; i++)
        CHECK(argv2[i].len == argv[i].len &&
                  memcmp(argv2[i].data, argv[i].data, argv[i].len) == 0,
              "re-encoded argument %zu differs", i);
    free(copy);
}

/* Consumes requests from the whole of buf until one is incomplete or
 * refused, recording each result. */
static void run_stream(struct resp_parser *p, struct resp_parser *small,
                       struct resp_parser *big, const struct limits *lim,
                       const uint8_t *buf, size_t size, struct results *out)
{
    current_pass = "whole stream";
    size_t pos = 0;
    for (;;) {
        struct result r = {.pos = pos};
        struct resp_arg *argv = NULL;
        r.status = resp_parse(p, (const char *)buf + pos, size - pos,
                              &r.consumed, &r.argc, &argv, r.err, ERR_CAP);
        check_result(p, lim, buf + pos, size - pos, r.status, r.consumed,
                     r.argc, argv, r.err, ERR_CAP);
        if (r.status == RESP_DONE) {
            r.hash = args_hash(r.argc, argv);
            check_reencoded(big, r.argc, argv);
        }
        results_add(out, &r);

        /* The same call with a short error buffer. */
        char err[SMALL_ERR_CAP];
        size_t consumed, argc;
        struct resp_arg *argv_small = NULL;
        enum resp_status st =
            resp_parse(small, (const char *)buf + pos, size - pos, &consumed,
                       &argc, &argv_small, err, sizeof err);
        CHECK(st == r.status && consumed == r.consumed && argc == r.argc,
              "with a %d-byte error buffer: status %d, %zu bytes",
              SMALL_ERR_CAP, st, consumed);
        CHECK(strnlen(err, sizeof err) < sizeof err &&
                  strncmp(err, r.err, strlen(err)) == 0,
              "short error message '%s' is not the start of '%s'", err, r.err);
        if (st == RESP_DONE)
            CHECK(args_hash(argc, argv_small) == r.hash,
                  "different arguments from a second parser");

        if (r.status != RESP_DONE && r.status != RESP_EMPTY)
            return;
        pos += r.consumed;
    }
}

static uint64_t next_random(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Delivers buf in pieces (1 byte each when seed is 0, else 1 to 64 bytes
 * drawn from seed), parsing what is buffered after each piece, and
 * requires the results recorded by run_stream. */
static void run_pieces(struct resp_parser *p, const struct limits *lim,
                       const uint8_t *buf, size_t size, uint8_t *scratch,
                       const struct results *want, uint64_t seed)
{
    current_pass = seed == 0 ? "byte by byte" : "in pieces";
    uint64_t rng = seed;
    size_t avail = 0, pos = 0, k = 0;
    for (;;) {
        if (avail < size) {
            size_t piece = seed == 0 ? 1 : 1 + next_random(&rng) % 64;
            avail += piece < size - avail ? piece : size - avail;
        }
        for (;;) {
            /* Only the delivered bytes, at the end of the allocation. */
            size_t window = avail - pos;
            uint8_t *w = scratch + (size - window);
            memmove(w, buf + pos, window);
            struct result r = {.pos = pos};
            struct resp_arg *argv = NULL;
            r.status = resp_parse(p, (const char *)w, window, &r.consumed,
                                  &r.argc, &argv, r.err, ERR_CAP);
            check_result(p, lim, w, window, r.status, r.consumed, r.argc, argv,
                         r.err, ERR_CAP);
            if (r.status == RESP_INCOMPLETE && avail < size)
                break; /* wait for the next piece */
            if (r.status == RESP_DONE)
                r.hash = args_hash(r.argc, argv);
            CHECK(k < want->n,
                  "result %zu at %zu: status %d, after the "
                  "whole stream had ended",
                  k, pos, r.status);
            const struct result *e = &want->v[k];
            /* consumed means something only for a request (not an error). */
            bool request = r.status == RESP_DONE || r.status == RESP_EMPTY;
            CHECK(r.pos == e->pos && r.status == e->status &&
                      (!request || r.consumed == e->consumed) &&
                      r.argc == e->argc && r.hash == e->hash &&
                      strcmp(r.err, e->err) == 0,
                  "result %zu: at %zu status %d, %zu bytes, %zu args (%s); "
                  "the whole stream gave at %zu status %d, %zu bytes, "
                  "%zu args (%s)",
                  k, r.pos, r.status, r.consumed, r.argc, r.err, e->pos,
                  e->status, e->consumed, e->argc, e->err);
            k++;
            if (r.status != RESP_DONE && r.status != RESP_EMPTY) {
                CHECK(k == want->n, "stopped at result %zu of %zu", k, want->n);
                return;
            }
            pos += r.consumed;
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    current_data = data;
    current_size = size;
    /* An allocation of exactly the input, so that over-reads are caught. */
    uint8_t *buf = malloc(size ? size : 1);
    uint8_t *scratch = malloc(size ? size : 1);
    if (buf == NULL || scratch == NULL)
        abort();
    if (size > 0)
        memcpy(buf, data, size);
    uint64_t seed = fnv1a(0xcbf29ce484222325ull, data, size) | 1;

    struct resp_parser big;
    resp_parser_init(&big, 1u << 20, 1024);
    for (size_t l = 0; l < sizeof limit_sets / sizeof limit_sets[0]; l++) {
        const struct limits *lim = &limit_sets[l];
        current_limits = lim;
        struct resp_parser p, small;
        resp_parser_init(&p, lim->max_request_bytes, lim->max_args);
        resp_parser_init(&small, lim->max_request_bytes, lim->max_args);
        struct results results = {0};
        run_stream(&p, &small, &big, lim, buf, size, &results);
        if (size <= BYTEWISE_MAX)
            run_pieces(&p, lim, buf, size, scratch, &results, 0);
        run_pieces(&p, lim, buf, size, scratch, &results, seed);
        free(results.v);
        resp_parser_free(&p);
        resp_parser_free(&small);
    }
    resp_parser_free(&big);
    current_limits = NULL;
    free(buf);
    free(scratch);
    return 0;
}

#ifndef SHMKV_LIBFUZZER

/* ---- the standalone driver ---- */

#define C(lit)                                                                 \
    {                                                                          \
        (lit), sizeof(lit) - 1                                                 \
    }

static const struct {
    const char *data;
    size_t len;
} corpus[] = {
    C("*1\r\n$4\r\nPING\r\n"),
    C("*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n"),
    C("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n"),
    C("*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n$2\r\nEX\r\n$2\r\n10\r\n"),
    C("*2\r\n$4\r\nECHO\r\n$6\r\na\r\n\0\"'\r\n"),
    C("*3\r\n$3\r\nDEL\r\n$01\r\na\r\n$1\r\nb\r\n"),
    C("*0\r\n"),
    C("*-1\r\n"),
    C("*1\r\n$40\r\n0123456789012345678901234567890123456789\r\n"),
    C("PING\r\n"),
    C("GET key\n"),
    C("SET k \"a b\\n\\x41\\\"\\\\\" 'it\\'s'\r\n"),
    C("  ECHO\t'x' \"\" \"\\xff\\x0\\q\"\r\n"),
    C("MSET a 1 b 2 c 3 d 4 e 5 f 6 g 7 h 8\r\n"),
    C("\r\n"),
    C("\n"),
    C("SET ab\"cd ef\"gh\r\n"),
};

static const char interesting_bytes[] = "\r\n*$\"'\\x -+0123456789aF\t\0\xff";

static const char *const interesting_numbers[] = {
    "-1",
    "0",
    "1",
    "3",
    "4",
    "17",
    "47",
    "48",
    "49",
    "64",
    "113",
    "512",
    "513",
    "1024",
    "4294967296",
    "999999999999999999",
    "-999999999999999999",
    "1000000000000000000",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "99999999999999999999",
    "-9223372036854775808",
};

#define INPUT_MAX 4096

static size_t insert_bytes(uint8_t *buf, size_t len, size_t at,
                           const void *bytes, size_t n)
{
    if (len + n > INPUT_MAX)
        n = INPUT_MAX - len;
    memmove(buf + at + n, buf + at, len - at);
    memcpy(buf + at, bytes, n);
    return len + n;
}

/* Makes one input: one to three corpus entries, then up to eight
 * mutations. */
static size_t make_input(uint64_t *rng, uint8_t *buf)
{
    size_t len = 0, n_corpus = sizeof corpus / sizeof corpus[0];
    for (uint64_t k = 1 + next_random(rng) % 3; k > 0; k--) {
        size_t i = next_random(rng) % n_corpus;
        len = insert_bytes(buf, len, len, corpus[i].data, corpus[i].len);
    }
    for (uint64_t m = next_random(rng) % 9; m > 0; m--) {
        size_t at = len ? next_random(rng) % len : 0;
        uint8_t c = (uint8_t)interesting_bytes[next_random(rng) %
                                               (sizeof interesting_bytes - 1)];
        switch (next_random(rng) % 10) {
        case 0: /* flip a bit */
            if (len)
                buf[at] ^= (uint8_t)(1u << (next_random(rng) % 8));
            break;
        case 1: /* overwrite a byte */
            if (len)
                buf[at] = c;
            break;
        case 2: /* insert a byte */
            len = insert_bytes(buf, len, at, &c, 1);
            break;
        case 3: /* delete a few bytes */
            if (len) {
                size_t n = 1 + next_random(rng) % 4;
                if (n > len - at)
                    n = len - at;
                memmove(buf + at, buf + at + n, len - at - n);
                len -= n;
            }
            break;
        case 4: /* insert a number */
        case 5: {
            const char *num =
                interesting_numbers[next_random(rng) %
                                    (sizeof interesting_numbers /
                                     sizeof interesting_numbers[0])];
            /* Replacing a number where there is one. */
            size_t end = at;
            while (end < len && buf[end] >= '0' && buf[end] <= '9')
                end++;
            memmove(buf + at, buf + end, len - end);
            len -= end - at;
            len = insert_bytes(buf, len, at, num, strlen(num));
            break;
        }
        case 6: /* copy a slice elsewhere */
            if (len) {
                uint8_t slice[64];
                size_t n = 1 + next_random(rng) % sizeof slice;
                if (n > len - at)
                    n = len - at;
                memcpy(slice, buf + at, n);
                len = insert_bytes(buf, len, next_random(rng) % (len + 1),
                                   slice, n);
            }
            break;
        case 7: /* cut the end */
            len = at;
            break;
        case 8: { /* a run of one byte, to reach the limits */
            uint8_t run[600];
            size_t n = 1 + next_random(rng) % sizeof run;
            memset(run, next_random(rng) % 2 ? 'a' : c, n);
            len = insert_bytes(buf, len, at, run, n);
            break;
        }
        default: { /* random bytes */
            uint8_t bytes[4];
            size_t n = 1 + next_random(rng) % sizeof bytes;
            for (size_t i = 0; i < n; i++)
                bytes[i] = (uint8_t)next_random(rng);
            len = insert_bytes(buf, len, at, bytes, n);
            break;
        }
        }
    }
    return len;
}

static int run_file(const char *path)
{
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) {
        perror(path);
        return -1;
    }
    size_t cap = 4096, len = 0;
    uint8_t *data = malloc(cap);
    size_t n;
    while (data != NULL && (n = fread(data + len, 1, cap - len, fp)) > 0) {
        len += n;
        if (len == cap) {
            uint8_t *bigger = realloc(data, cap * 2);
            if (bigger == NULL) {
                free(data);
                data = NULL;
                break;
            }
            data = bigger;
            cap *= 2;
        }
    }
    bool bad = data == NULL || ferror(fp);
    fclose(fp);
    if (bad) {
        fprintf(stderr, "%s: cannot read\n", path);
        free(data);
        return -1;
    }
    LLVMFuzzerTestOneInput(data, len);
    free(data);
    return 0;
}

/* Runs the target on a file, or on each regular file in a directory.
 * Returns how many inputs ran, or -1. */
static long run_path(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        perror(path);
        return -1;
    }
    if (!S_ISDIR(st.st_mode))
        return run_file(path) == 0 ? 1 : -1;
    DIR *dir = opendir(path);
    if (dir == NULL) {
        perror(path);
        return -1;
    }
    long count = 0;
    struct dirent *de;
    while ((de = readdir(dir)) != NULL) {
        char child[4096];
        snprintf(child, sizeof child, "%s/%s", path, de->d_name);
        if (stat(child, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (run_file(child) != 0) {
            count = -1;
            break;
        }
        count++;
    }
    closedir(dir);
    return count;
}

static unsigned long long env_number(const char *name,
                                     unsigned long long fallback)
{
    const char *s = getenv(name);
    if (s == NULL || *s == '\0')
        return fallback;
    char *end;
    unsigned long long v = strtoull(s, &end, 0);
    if (*end != '\0') {
        fprintf(stderr, "fuzz_resp: %s='%s' is not a number\n", name, s);
        exit(2);
    }
    return v;
}

/* Writes each corpus entry to DIR/seed-N, as a starting corpus for
 * libFuzzer. */
static int write_corpus(const char *dir)
{
    for (size_t i = 0; i < sizeof corpus / sizeof corpus[0]; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/seed-%02zu", dir, i);
        FILE *fp = fopen(path, "wb");
        if (fp == NULL ||
            fwrite(corpus[i].data, 1, corpus[i].len, fp) != corpus[i].len) {
            perror(path);
            if (fp != NULL)
                fclose(fp);
            return 2;
        }
        if (fclose(fp) != 0) {
            perror(path);
            return 2;
        }
    }
    return 0;
}

/* Writes a libFuzzer dictionary: the protocol's tokens and the numbers
 * around the limits and the integer boundaries. */
static int write_dict(const char *path)
{
    static const char *const tokens[] = {
        "\\x0d\\x0a", "*",     "$",     "\\\"",  "'",
        "\\\\",       "\\\\x", "\\\\n", "\\\\'", "\\x09",
    };
    FILE *fp = fopen(path, "w");
    if (fp == NULL) {
        perror(path);
        return 2;
    }
    for (size_t i = 0; i < sizeof tokens / sizeof tokens[0]; i++)
        fprintf(fp, "\"%s\"\n", tokens[i]);
    for (size_t i = 0;
         i < sizeof interesting_numbers / sizeof interesting_numbers[0]; i++)
        fprintf(fp, "\"%s\"\n", interesting_numbers[i]);
    if (fclose(fp) != 0) {
        perror(path);
        return 2;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--write-corpus") == 0)
        return write_corpus(argv[2]);
    if (argc == 3 && strcmp(argv[1], "--write-dict") == 0)
        return write_dict(argv[2]);
    if (argc > 1) {
        long total = 0;
        for (int i = 1; i < argc; i++) {
            long n = run_path(argv[i]);
            if (n < 0)
                return 2;
            total += n;
        }
        printf("fuzz_resp: %ld inputs from files, every check held\n", total);
        return 0;
    }
    unsigned long runs = (unsigned long)env_number("FUZZ_RUNS", 200000);
    driver_seed = env_number("FUZZ_SEED", 1);
    driver_generated = true;
    printf("fuzz_resp: %lu generated inputs, FUZZ_SEED=%llu\n", runs,
           driver_seed);
    fflush(stdout);
    uint64_t rng = driver_seed;
    static uint8_t input[INPUT_MAX];
    for (driver_run = 0; driver_run < runs; driver_run++) {
        size_t len = make_input(&rng, input);
        LLVMFuzzerTestOneInput(input, len);
    }
    printf("fuzz_resp: %lu inputs, every check held\n", runs);
    return 0;
}

#endif /* SHMKV_LIBFUZZER */
