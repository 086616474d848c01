/*
 * fuzz_resp.c - a fuzz target for the RESP2 request parser (daemon/resp.c).
 *
 * The input is the byte stream of one connection. For each of two sets of
 * small limits, LLVMFuzzerTestOneInput
 *  - consumes requests one after another from the whole input, checking
 *    every result: consumed <= len, arguments inside the request or the
 *    parser's inline storage, 1 <= argc <= max_args, storage no larger than
 *    the limits allow, an error message in Redis's style that fits err;
 *    the same answer as a reference decoder written from the protocol's
 *    rules (status, consumed, argc, each argument's bytes, the error
 *    message and resp_need), whatever the input, so that a request the
 *    parser should refuse (a negative bulk length, say) cannot pass; and
 *    the arguments written back with the reply writers parse back
 *    unchanged;
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
 * made with a seeded generator (FUZZ_SEED, default 1) from a built-in
 * corpus of requests and from requests built with damaged fields:
 * deterministic, so that it runs in `make test` with gcc alone. It exits 0
 * when every check held (and, for generated inputs, prints how often each
 * rule of the reference decided, failing if one never did). `--write-corpus
 * DIR` and `--write-dict FILE` write the built-in corpus and a dictionary of
 * tokens and boundary numbers, to start libFuzzer from.
 */
#include <dirent.h>
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
#define LIMIT_SETS (sizeof limit_sets / sizeof limit_sets[0])

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

/* ---- the reference decoder ----
 *
 * What the first request in a buffer means, worked out from the rules
 * below rather than from resp.c's code. Every result of the parser, in
 * every pass, must be the reference's: status, consumed, argc, each
 * argument's bytes (and for a multibulk request their place in the
 * buffer), the error message, and resp_need. The rules are Redis's
 * (processMultibulkBuffer and processInlineBuffer in networking.c,
 * sdssplitargs in sds.c) with the parser's limits, number syntax and
 * header wait.
 *
 * A buffer that starts with '*' holds a multibulk request:
 *  M1 A header ("*<count>\r\n" or "$<length>\r\n") ends at the first CRLF
 *     after its type byte. Until that arrives the request is incomplete,
 *     or refused once more than HEADER_WAIT_BYTES are buffered from the
 *     type byte on (every valid header is shorter).
 *  M2 A count or length is an optional '-' and 1 to 18 decimal digits,
 *     nothing else: no '+', no blanks, no 19th digit, so no overflow;
 *     else "invalid multibulk length" or "invalid bulk length". Leading
 *     zeros pass (the corpus's "$01"), which Redis's string2ll refuses.
 *  M3 A count <= 0 ("*0", "*-1", "*-5") is an empty request: the header
 *     is skipped.
 *  M4 A count over max_args is refused (TOO_BIG) before any argument.
 *  M5 Each argument starts with '$' (else "expected '$', got 'c'", '?'
 *     for a byte that does not print). Its length must not be negative: a
 *     request has no null bulk string, so "$-1" is an "invalid bulk
 *     length" like "$-5".
 *  M6 Once a length is read, the request is refused (TOO_BIG, "request
 *     too big") if its bytes up to the CRLF after that body would be more
 *     than max_request_bytes, before the body arrives. Otherwise, until
 *     the body and its CRLF are buffered, the request is incomplete and
 *     resp_need is the offset of their end.
 *  M7 A body must be followed by CRLF ("bulk not followed by CRLF").
 * Any other buffer holds an inline request:
 *  I1 Its line ends at the first '\n'. Until one arrives the request is
 *     incomplete, or TOO_BIG ("too big inline request") once more than
 *     max_request_bytes are buffered.
 *  I2 Whatever the outcome, consumed is the line with its '\n'.
 *  I3 A line (without its '\n') longer than max_request_bytes is TOO_BIG.
 *  I4 One '\r' before the '\n' is dropped and the rest is split into
 *     arguments from the left (ref_split): one with unbalanced quotes is
 *     refused, and so is the (max_args + 1)th once it is read (TOO_BIG,
 *     "too many arguments in request").
 *  I5 A line without arguments is an empty request.
 * An empty buffer is incomplete. consumed and argc are 0 unless a rule
 * gives them, and resp_need is 0 except under M6.
 */

#define HEADER_WAIT_BYTES 32

enum ref_rule {
    REF_EMPTY_BUFFER,
    REF_COUNT_WAIT,
    REF_COUNT_UNENDED,
    REF_COUNT_NOT_NUMBER,
    REF_COUNT_ZERO,
    REF_COUNT_NEGATIVE,
    REF_COUNT_OVER_MAX,
    REF_ARG_WAIT,
    REF_ARG_NOT_BULK,
    REF_LENGTH_WAIT,
    REF_LENGTH_UNENDED,
    REF_LENGTH_NOT_NUMBER,
    REF_LENGTH_NEGATIVE,
    REF_REQUEST_TOO_BIG,
    REF_BODY_WAIT,
    REF_BODY_UNENDED,
    REF_MULTIBULK,
    REF_LINE_WAIT,
    REF_LINE_UNENDED,
    REF_LINE_TOO_LONG,
    REF_QUOTES_UNBALANCED,
    REF_WORDS_OVER_MAX,
    REF_LINE_BLANK,
    REF_INLINE,
    REF_RULES
};

/* What each outcome means for the parser: its status and error message
 * (after PROTO_PREFIX; REF_ARG_NOT_BULK's names the byte). */
static const struct {
    const char *name;
    enum resp_status status;
    const char *err;
} ref_rules[REF_RULES] = {
    [REF_EMPTY_BUFFER] = {"empty buffer", RESP_INCOMPLETE, NULL},
    [REF_COUNT_WAIT] = {"M1 count line incomplete", RESP_INCOMPLETE, NULL},
    [REF_COUNT_UNENDED] = {"M1 count line without CRLF", RESP_PROTO,
                           "invalid multibulk length"},
    [REF_COUNT_NOT_NUMBER] = {"M2 count not a number", RESP_PROTO,
                              "invalid multibulk length"},
    [REF_COUNT_ZERO] = {"M3 count 0", RESP_EMPTY, NULL},
    [REF_COUNT_NEGATIVE] = {"M3 negative count", RESP_EMPTY, NULL},
    [REF_COUNT_OVER_MAX] = {"M4 count over max_args", RESP_TOO_BIG,
                            "too many arguments in request"},
    [REF_ARG_WAIT] = {"M5 next argument not here", RESP_INCOMPLETE, NULL},
    [REF_ARG_NOT_BULK] = {"M5 argument without '$'", RESP_PROTO, NULL},
    [REF_LENGTH_WAIT] = {"M1 length line incomplete", RESP_INCOMPLETE, NULL},
    [REF_LENGTH_UNENDED] = {"M1 length line without CRLF", RESP_PROTO,
                            "invalid bulk length"},
    [REF_LENGTH_NOT_NUMBER] = {"M2 length not a number", RESP_PROTO,
                               "invalid bulk length"},
    [REF_LENGTH_NEGATIVE] = {"M5 negative length", RESP_PROTO,
                             "invalid bulk length"},
    [REF_REQUEST_TOO_BIG] = {"M6 over max_request_bytes", RESP_TOO_BIG,
                             "request too big"},
    [REF_BODY_WAIT] = {"M6 body incomplete", RESP_INCOMPLETE, NULL},
    [REF_BODY_UNENDED] = {"M7 body without CRLF", RESP_PROTO,
                          "bulk not followed by CRLF"},
    [REF_MULTIBULK] = {"multibulk request", RESP_DONE, NULL},
    [REF_LINE_WAIT] = {"I1 line incomplete", RESP_INCOMPLETE, NULL},
    [REF_LINE_UNENDED] = {"I1 over max_request_bytes without newline",
                          RESP_TOO_BIG, "too big inline request"},
    [REF_LINE_TOO_LONG] = {"I3 line over max_request_bytes", RESP_TOO_BIG,
                           "too big inline request"},
    [REF_QUOTES_UNBALANCED] = {"I4 unbalanced quotes", RESP_PROTO,
                               "unbalanced quotes in request"},
    [REF_WORDS_OVER_MAX] = {"I4 arguments over max_args", RESP_TOO_BIG,
                            "too many arguments in request"},
    [REF_LINE_BLANK] = {"I5 blank line", RESP_EMPTY, NULL},
    [REF_INLINE] = {"inline request", RESP_DONE, NULL},
};

/* How often the whole-stream pass met each rule, for the driver's
 * report. */
static unsigned long ref_tally[LIMIT_SETS][REF_RULES];

struct ref_arg {
    size_t start, len; /* in ref_result.base */
};

/* The reference's storage for one input: decoded inline bytes (never more
 * than the input) and the arguments (never more than max_args). */
struct ref_decoder {
    uint8_t *bytes;
    struct ref_arg *args;
};

struct ref_result {
    enum ref_rule rule;
    enum resp_status status;
    size_t consumed, argc, need;
    char err[ERR_CAP];
    uint8_t bad_byte;    /* REF_ARG_NOT_BULK */
    const uint8_t *base; /* the buffer (multibulk) or the decoded bytes */
    const struct ref_arg *args;
};

/* M2: s[0, n) as a count or length. */
static bool ref_number(const uint8_t *s, size_t n, long long *value)
{
    bool negative = n > 0 && s[0] == '-';
    size_t digits = negative ? n - 1 : n;
    if (digits < 1 || digits > 18)
        return false;
    long long v = 0; /* at most 10^18 - 1 */
    for (size_t i = n - digits; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = 10 * v + (s[i] - '0');
    }
    *value = negative ? -v : v;
    return true;
}

enum ref_header { HEADER_OK, HEADER_WAIT, HEADER_UNENDED, HEADER_NOT_NUMBER };

/* M1 and M2: the header whose type byte is buf[at]. On HEADER_OK, *value
 * is its number and *next the offset after its CRLF. */
static enum ref_header ref_header(const uint8_t *buf, size_t len, size_t at,
                                  size_t *next, long long *value)
{
    const uint8_t *digits = buf + at + 1;
    const uint8_t *crlf = memmem(digits, len - (at + 1), "\r\n", 2);
    if (crlf == NULL)
        return len - at > HEADER_WAIT_BYTES ? HEADER_UNENDED : HEADER_WAIT;
    *next = (size_t)(crlf - buf) + 2;
    return ref_number(digits, (size_t)(crlf - digits), value)
               ? HEADER_OK
               : HEADER_NOT_NUMBER;
}

static enum ref_rule ref_multibulk(struct ref_decoder *ref,
                                   const struct limits *lim, const uint8_t *buf,
                                   size_t len, struct ref_result *r)
{
    size_t pos = 0;
    long long count;
    switch (ref_header(buf, len, 0, &pos, &count)) {
    case HEADER_WAIT:
        return REF_COUNT_WAIT;
    case HEADER_UNENDED:
        return REF_COUNT_UNENDED;
    case HEADER_NOT_NUMBER:
        return REF_COUNT_NOT_NUMBER;
    case HEADER_OK:
        break;
    }
    if (count <= 0) {
        r->consumed = pos;
        return count == 0 ? REF_COUNT_ZERO : REF_COUNT_NEGATIVE;
    }
    if ((unsigned long long)count > lim->max_args)
        return REF_COUNT_OVER_MAX;
    for (size_t i = 0; i < (size_t)count; i++) {
        if (pos == len)
            return REF_ARG_WAIT;
        if (buf[pos] != '$') {
            r->bad_byte = buf[pos];
            return REF_ARG_NOT_BULK;
        }
        size_t body = 0;
        long long body_len;
        switch (ref_header(buf, len, pos, &body, &body_len)) {
        case HEADER_WAIT:
            return REF_LENGTH_WAIT;
        case HEADER_UNENDED:
            return REF_LENGTH_UNENDED;
        case HEADER_NOT_NUMBER:
            return REF_LENGTH_NOT_NUMBER;
        case HEADER_OK:
            break;
        }
        if (body_len < 0)
            return REF_LENGTH_NEGATIVE;
        /* body_len < 10^18: the sum cannot wrap. */
        unsigned long long end = body + (unsigned long long)body_len + 2;
        if (end > lim->max_request_bytes)
            return REF_REQUEST_TOO_BIG;
        if (end > len) {
            r->need = (size_t)end;
            return REF_BODY_WAIT;
        }
        if (buf[end - 2] != '\r' || buf[end - 1] != '\n')
            return REF_BODY_UNENDED;
        ref->args[i].start = body;
        ref->args[i].len = (size_t)body_len;
        pos = (size_t)end;
    }
    r->consumed = pos;
    r->argc = (size_t)count;
    return REF_MULTIBULK;
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

/* I4: splits line[0, n) as redis-cli does: blanks (space, tab) separate;
 * "..." takes \n \r \t \b \a, \xHH and \<other byte> for that byte; '...'
 * takes \' only; a closing quote must end its argument. The decoded
 * bytes go to ref->bytes. */
static enum ref_rule ref_split(struct ref_decoder *ref, size_t max_args,
                               const uint8_t *line, size_t n,
                               struct ref_result *r)
{
    uint8_t *out = ref->bytes;
    size_t i = 0, o = 0, count = 0;
    for (;;) {
        while (i < n && is_blank(line[i]))
            i++;
        if (i == n)
            break;
        size_t start = o;
        uint8_t quote = 0;
        for (;;) {
            if (i == n) {
                if (quote != 0)
                    return REF_QUOTES_UNBALANCED;
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
                        return REF_QUOTES_UNBALANCED;
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
                        return REF_QUOTES_UNBALANCED;
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
        if (count == max_args)
            return REF_WORDS_OVER_MAX;
        ref->args[count].start = start;
        ref->args[count].len = o - start;
        count++;
    }
    if (count == 0)
        return REF_LINE_BLANK;
    r->argc = count;
    return REF_INLINE;
}

static enum ref_rule ref_inline(struct ref_decoder *ref,
                                const struct limits *lim, const uint8_t *buf,
                                size_t len, struct ref_result *r)
{
    const uint8_t *nl = memchr(buf, '\n', len);
    if (nl == NULL)
        return len > lim->max_request_bytes ? REF_LINE_UNENDED : REF_LINE_WAIT;
    size_t n = (size_t)(nl - buf);
    r->consumed = n + 1;
    if (n > lim->max_request_bytes)
        return REF_LINE_TOO_LONG;
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    return ref_split(ref, lim->max_args, buf, n, r);
}

/* What the parser must answer for buf[0, len). */
static void ref_decode(struct ref_decoder *ref, const struct limits *lim,
                       const uint8_t *buf, size_t len, struct ref_result *r)
{
    r->consumed = r->argc = r->need = 0;
    r->args = ref->args;
    if (len == 0) {
        r->base = buf;
        r->rule = REF_EMPTY_BUFFER;
    } else if (buf[0] == '*') {
        r->base = buf;
        r->rule = ref_multibulk(ref, lim, buf, len, r);
    } else {
        r->base = ref->bytes;
        r->rule = ref_inline(ref, lim, buf, len, r);
    }
    r->status = ref_rules[r->rule].status;
    if (r->rule == REF_ARG_NOT_BULK) {
        uint8_t c = r->bad_byte;
        snprintf(r->err, sizeof r->err, PROTO_PREFIX "expected '$', got '%c'",
                 c >= 32 && c < 127 ? c : '?');
    } else if (ref_rules[r->rule].err != NULL) {
        snprintf(r->err, sizeof r->err, PROTO_PREFIX "%s",
                 ref_rules[r->rule].err);
    } else {
        r->err[0] = '\0';
    }
}

/* Requires the parser's answer for buf[0, len) to be the reference's.
 * Returns the rule that decided it. */
static enum ref_rule
check_reference(struct ref_decoder *ref, const struct resp_parser *p,
                const struct limits *lim, const uint8_t *buf, size_t len,
                enum resp_status st, size_t consumed, size_t argc,
                const struct resp_arg *argv, const char *err)
{
    struct ref_result want;
    ref_decode(ref, lim, buf, len, &want);
    CHECK(st == want.status && consumed == want.consumed && argc == want.argc &&
              strcmp(err, want.err) == 0,
          "status %d, %zu bytes, %zu args, error '%s'; the reference (%s): "
          "status %d, %zu bytes, %zu args, error '%s'",
          st, consumed, argc, err, ref_rules[want.rule].name, want.status,
          want.consumed, want.argc, want.err);
    /* A call on no bytes leaves resp_need as it was; the daemon never
     * makes one. */
    if (st == RESP_INCOMPLETE && len > 0)
        CHECK(resp_need(p) == want.need,
              "resp_need %zu; the reference (%s): %zu", resp_need(p),
              ref_rules[want.rule].name, want.need);
    for (size_t i = 0; i < argc; i++) {
        const struct ref_arg *a = &want.args[i];
        const char *bytes = (const char *)want.base + a->start;
        CHECK(argv[i].len == a->len && memcmp(argv[i].data, bytes, a->len) == 0,
              "argument %zu: %zu bytes, the reference (%s): %zu other bytes", i,
              argv[i].len, ref_rules[want.rule].name, a->len);
        CHECK(want.base != buf || argv[i].data == bytes,
              "argument %zu at offset %td, the reference's at %zu", i,
              argv[i].data - (const char *)buf, a->start);
    }
    return want.rule;
}

/* ---- checking one result ---- */

static size_t args_cap_bound(size_t max_args)
{
    return max_args <= 8 ? 8 : 2 * max_args;
}

/* Checks one answer of the parser on buf[0, len): its invariants, then
 * that it is the reference's. Returns the reference's rule. */
static enum ref_rule
check_result(struct ref_decoder *ref, const struct resp_parser *p,
             const struct limits *lim, const uint8_t *buf, size_t len,
             enum resp_status st, size_t consumed, size_t argc,
             const struct resp_arg *argv, const char *err, size_t err_cap)
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
    return check_reference(ref, p, lim, buf, len, st, consumed, argc, argv,
                           err);
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
static void run_stream(struct ref_decoder *ref, struct resp_parser *p,
                       struct resp_parser *small, struct resp_parser *big,
                       const struct limits *lim, const uint8_t *buf,
                       size_t size, struct results *out)
{
    current_pass = "whole stream";
    resp_parser_reset(p);
    resp_parser_reset(small);
    size_t pos = 0;
    for (;;) {
        struct result r = {.pos = pos};
        struct resp_arg *argv = NULL;
        r.status = resp_parse(p, (const char *)buf + pos, size - pos,
                              &r.consumed, &r.argc, &argv, r.err, ERR_CAP);
        enum ref_rule rule =
            check_result(ref, p, lim, buf + pos, size - pos, r.status,
                         r.consumed, r.argc, argv, r.err, ERR_CAP);
        ref_tally[lim - limit_sets][rule]++;
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
static void run_pieces(struct ref_decoder *ref, struct resp_parser *p,
                       const struct limits *lim, const uint8_t *buf,
                       size_t size, uint8_t *scratch,
                       const struct results *want, uint64_t seed)
{
    current_pass = seed == 0 ? "byte by byte" : "in pieces";
    resp_parser_reset(p);
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
            check_result(ref, p, lim, w, window, r.status, r.consumed, r.argc,
                         argv, r.err, ERR_CAP);
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

    /* The reference's storage: its decoded bytes never outnumber the
     * input's, its arguments never the largest max_args. */
    size_t max_args = 0;
    for (size_t l = 0; l < LIMIT_SETS; l++)
        if (limit_sets[l].max_args > max_args)
            max_args = limit_sets[l].max_args;
    struct ref_decoder ref = {
        .bytes = malloc(size ? size : 1),
        .args = malloc(max_args * sizeof *ref.args),
    };
    if (ref.bytes == NULL || ref.args == NULL)
        abort();

    struct resp_parser big;
    resp_parser_init(&big, 1u << 20, 1024);
    for (size_t l = 0; l < LIMIT_SETS; l++) {
        const struct limits *lim = &limit_sets[l];
        current_limits = lim;
        struct resp_parser p, small;
        resp_parser_init(&p, lim->max_request_bytes, lim->max_args);
        resp_parser_init(&small, lim->max_request_bytes, lim->max_args);
        struct results results = {0};
        run_stream(&ref, &p, &small, &big, lim, buf, size, &results);
        if (size <= BYTEWISE_MAX)
            run_pieces(&ref, &p, lim, buf, size, scratch, &results, 0);
        run_pieces(&ref, &p, lim, buf, size, scratch, &results, seed);
        free(results.v);
        resp_parser_free(&p);
        resp_parser_free(&small);
    }
    resp_parser_free(&big);
    current_limits = NULL;
    free(ref.bytes);
    free(ref.args);
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
    /* Requests with lengths the parser must refuse, for libFuzzer to
     * start from. */
    C("*2\r\n$3\r\nGET\r\n$-1\r\n\r\n"),
    C("*2\r\n$-1\r\n$3\r\nGET\r\n"),
    C("*1\r\n$-5\r\nPING\r\n"),
    C("*1\r\n$+4\r\nPING\r\n"),
    C("*1\r\n$ 4\r\nPING\r\n"),
    C("*1\r\n$4 \r\nPING\r\n"),
    C("*1\r\n$9223372036854775808\r\nPING\r\n"),
    C("*+1\r\n$4\r\nPING\r\n"),
    C("*-5\r\n"),
};

static const char interesting_bytes[] = "\r\n*$\"'\\x -+0123456789aF\t\0\xff";

static const char *const interesting_numbers[] = {
    "-1",
    "-5",
    "-0",
    "+1",
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
    "000000000000000001",
    "0000000000000000001",
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

/* ---- requests built field by field ----
 *
 * Mutating the corpus seldom lands on a length field. These build
 * multibulk and inline requests a field at a time, each right most of the
 * time and otherwise spelled in one of the ways a client (or an attacker)
 * gets it wrong, so that the generated inputs meet every rule of the
 * reference often: main checks that they all were met. */

/* Counts and lengths that are negative, and other wrong spellings; '#'
 * stands for the right number. */
static const char *const negative_numbers[] = {
    "-1", "-#", "-5", "-0", "-999999999999999999", "-9223372036854775809",
};

static const char *const bad_numbers[] = {
    "-",
    "--#",
    "#-",
    "+#",
    "+0",
    " #",
    "# ",
    "\t#",
    "0#",
    "000000000000000001",
    "0000000000000000001",
    "#a",
    "0x#",
    "#.0",
    "#\r",
    "",
    "999999999999999999",
    "1000000000000000000",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551616",
    "99999999999999999999",
};

static const char *const bad_line_ends[] = {
    "\n", "\r", "", "\n\r", "\r\r\n", " \r\n", "\r\n\r\n",
};

/* One element of an array; of a string, possibly its NUL, a byte worth
 * trying too. */
#define PICK(rng, array)                                                       \
    (array)[next_random(rng) % (sizeof(array) / sizeof((array)[0]))]

static size_t append_str(uint8_t *buf, size_t len, const char *s)
{
    return insert_bytes(buf, len, len, s, strlen(s));
}

/* Appends a count or length of n: right 3 times in 4, else negative (3
 * in 16) or otherwise wrong. Sets *negative if it is spelled with a '-'. */
static size_t append_number(uint64_t *rng, uint8_t *buf, size_t len, size_t n,
                            bool *negative)
{
    const char *spelling = "#";
    uint64_t pick = next_random(rng) % 16;
    if (pick < 3)
        spelling = PICK(rng, negative_numbers);
    else if (pick == 3)
        spelling = PICK(rng, bad_numbers);
    *negative = spelling[0] == '-';
    char digits[24];
    int n_digits = snprintf(digits, sizeof digits, "%zu", n);
    for (const char *s = spelling; *s != '\0'; s++)
        len = *s == '#' ? insert_bytes(buf, len, len, digits, (size_t)n_digits)
                        : insert_bytes(buf, len, len, s, 1);
    return len;
}

static size_t append_line_end(uint64_t *rng, uint8_t *buf, size_t len)
{
    return append_str(buf, len,
                      next_random(rng) % 8 ? "\r\n" : PICK(rng, bad_line_ends));
}

/* Up to a few bytes mostly, else around one of the limits on
 * max_request_bytes (48 and 512). */
static size_t random_body_len(uint64_t *rng)
{
    switch (next_random(rng) % 8) {
    case 0:
        return 20 + next_random(rng) % 40;
    case 1:
        return 440 + next_random(rng) % 120;
    default:
        return next_random(rng) % 8;
    }
}

static size_t append_multibulk(uint64_t *rng, uint8_t *buf, size_t len)
{
    static const char body_bytes[] = "abcxyz019 \r\n$*-\"'\\";
    size_t argc =
        next_random(rng) % 8 ? next_random(rng) % 5 : 14 + next_random(rng) % 5;
    size_t declared = argc;
    if (next_random(rng) % 16 == 0)
        declared = (next_random(rng) % 2 || argc == 0) ? argc + 1 : argc - 1;
    bool negative;
    len = append_str(buf, len, "*");
    len = append_number(rng, buf, len, declared, &negative);
    len = append_line_end(rng, buf, len);
    for (size_t i = 0; i < argc; i++) {
        uint8_t type = next_random(rng) % 16 ? '$' : PICK(rng, "*+:-a\r\n");
        len = insert_bytes(buf, len, len, &type, 1);
        size_t body_len = random_body_len(rng);
        len = append_number(rng, buf, len, body_len, &negative);
        len = append_line_end(rng, buf, len);
        if (negative) {
            /* As an empty bulk ("$-1\r\n\r\n") or as a RESP2 null bulk
             * reply, with no body: the next header follows. */
            if (next_random(rng) % 2)
                len = append_str(buf, len, "\r\n");
            continue;
        }
        /* The body, sometimes a byte short or long. */
        uint64_t off = next_random(rng) % 16;
        if (off == 0 && body_len > 0)
            body_len--;
        else if (off == 1)
            body_len++;
        for (size_t b = 0; b < body_len && len < INPUT_MAX; b++) {
            uint8_t c = next_random(rng) % 4
                            ? (uint8_t)('a' + next_random(rng) % 26)
                            : (uint8_t)PICK(rng, body_bytes);
            len = insert_bytes(buf, len, len, &c, 1);
        }
        len = append_line_end(rng, buf, len);
    }
    return len;
}

static size_t append_inline(uint64_t *rng, uint8_t *buf, size_t len)
{
    static const char *const words[] = {
        "GET",      "SET",       "key",
        "v",        "\"a b\"",   "\"\\x41\\x7a\"",
        "\"\\x4\"", "\"\\xZZ\"", "\"\\n\\r\\t\\b\\a\\q\"",
        "'it\\'s'", "'a\\b'",    "''",
        "\"\"",     "\"open",    "'open",
        "\"a\"b",   "'a'b",      "a\"b\"",
        "\"\\\"",   "\"\\\\\"",  "\"a\tb\"",
        "$-1",      "*-1",       "a\rb",
        "\"\\",     "x\"",
    };
    static const char *const blanks[] = {" ", " ", " ", "\t", "  ", " \t"};
    static const char *const line_ends[] = {"\r\n", "\r\n", "\r\n",  "\n",
                                            "",     "\r",   "\r\r\n"};
    size_t n_words =
        next_random(rng) % 8 ? next_random(rng) % 5 : 14 + next_random(rng) % 5;
    if (next_random(rng) % 8 == 0)
        len = append_str(buf, len, PICK(rng, blanks));
    for (size_t i = 0; i < n_words; i++) {
        if (i > 0)
            len = append_str(buf, len, PICK(rng, blanks));
        if (next_random(rng) % 16 == 0) {
            /* A word long enough to reach max_request_bytes. */
            size_t n = next_random(rng) % 2 ? 30 + next_random(rng) % 30
                                            : 490 + next_random(rng) % 40;
            for (size_t b = 0; b < n && len < INPUT_MAX; b++)
                len = append_str(buf, len, "x");
        } else {
            len = append_str(buf, len, PICK(rng, words));
        }
    }
    return append_str(buf, len, PICK(rng, line_ends));
}

/* Makes one input: one to three requests, from the corpus or built, then
 * up to eight mutations (two when built: their damage is chosen). */
static size_t make_input(uint64_t *rng, uint8_t *buf)
{
    size_t len = 0, n_corpus = sizeof corpus / sizeof corpus[0];
    bool built = false;
    for (uint64_t k = 1 + next_random(rng) % 3; k > 0; k--) {
        uint64_t kind = next_random(rng) % 8;
        if (kind < 3) {
            size_t i = next_random(rng) % n_corpus;
            len = insert_bytes(buf, len, len, corpus[i].data, corpus[i].len);
        } else if (kind < 6) {
            len = append_multibulk(rng, buf, len);
            built = true;
        } else {
            len = append_inline(rng, buf, len);
            built = true;
        }
    }
    for (uint64_t m = next_random(rng) % (built ? 3 : 9); m > 0; m--) {
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
        "\\x0d\\x0a", "*",     "$",   "\\\"", "'", "\\\\", "\\\\x", "\\\\n",
        "\\\\'",      "\\x09", "$-1", "*-1",  "-", "+",    " ",
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

/* Prints how often the whole-stream pass met each rule of the reference
 * under each set of limits. From REQUIRE_EVERY_RULE_RUNS inputs on, a
 * rule never met under some limits means the generator has stopped
 * reaching it: returns 1. */
#define REQUIRE_EVERY_RULE_RUNS 100000

static int report_tally(unsigned long runs)
{
    int rc = 0;
    printf("fuzz_resp: requests by the reference's rule, limits");
    for (size_t l = 0; l < LIMIT_SETS; l++)
        printf(" %zu/%zu", limit_sets[l].max_request_bytes,
               limit_sets[l].max_args);
    printf(":\n");
    for (int rule = 0; rule < REF_RULES; rule++) {
        printf("  %-42s", ref_rules[rule].name);
        for (size_t l = 0; l < LIMIT_SETS; l++) {
            printf(" %8lu", ref_tally[l][rule]);
            if (ref_tally[l][rule] == 0 && runs >= REQUIRE_EVERY_RULE_RUNS)
                rc = 1;
        }
        printf("\n");
    }
    if (rc != 0)
        fprintf(stderr, "fuzz_resp: the generated inputs no longer meet "
                        "every rule of the reference\n");
    return rc;
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
    return report_tally(runs);
}

#endif /* SHMKV_LIBFUZZER */
