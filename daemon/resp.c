/*
 * resp.c - RESP2 request parsing and reply encoding (see resp.h).
 *
 * A request that arrives in many reads is parsed once: the parser keeps
 * how far it got (for a multibulk request, the arguments read, as offsets
 * from the request's start since the caller's buffer may move; for an
 * inline one, how far it found no newline) and resumes there, so a
 * request of a million arguments trickled a byte at a time costs what it
 * would in one read. Bulk bodies are jumped over, never scanned. What it
 * keeps besides is storage: the argument array and, for inline commands
 * (whose quotes and escapes must be decoded), a byte buffer; both grow only
 * with bytes actually received and are bounded by the limits.
 *
 * Safety rules: never read past buf + len; parse every length with
 * overflow checks; refuse a declared length or argument count over the
 * limits as soon as its header is complete, before the body arrives.
 */
#include <event2/buffer.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "resp.h"

void resp_parser_init(struct resp_parser *p, size_t max_request_bytes,
                      size_t max_args)
{
    memset(p, 0, sizeof *p);
    p->max_request_bytes = max_request_bytes;
    p->max_args = max_args;
}

void resp_parser_free(struct resp_parser *p)
{
    free(p->args);
    free(p->inline_buf);
    p->args = NULL;
    p->inline_buf = NULL;
    p->args_cap = p->inline_cap = 0;
}

void resp_parser_reset(struct resp_parser *p)
{
    p->mb_count = 0;
    p->mb_done = 0;
    p->mb_pos = 0;
    p->inline_scanned = 0;
}

static bool args_reserve(struct resp_parser *p, size_t n)
{
    if (n <= p->args_cap)
        return true;
    size_t cap = p->args_cap ? p->args_cap : 8;
    while (cap < n)
        cap *= 2;
    struct resp_arg *a = realloc(p->args, cap * sizeof *a);
    if (a == NULL)
        return false;
    p->args = a;
    p->args_cap = cap;
    return true;
}

static void set_err(char *err, size_t cap, const char *msg)
{
    if (cap > 0)
        snprintf(err, cap, "%s", msg);
}

/* Finds "\r\n" in buf[from, len): the index of '\r', or -1. */
static long find_crlf(struct resp_parser *p, const char *buf, size_t from,
                      size_t len)
{
    for (size_t i = from; i + 1 < len; i++) {
        if (buf[i] == '\r' && buf[i + 1] == '\n') {
            p->examined += i + 2 - from;
            return (long)i;
        }
    }
    p->examined += len > from ? len - from : 0;
    return -1;
}

/* Parses a decimal integer filling buf[from, to) exactly: an optional '-'
 * and 1 to 18 digits. */
static bool parse_len(const char *buf, size_t from, size_t to, long long *out)
{
    if (from >= to)
        return false;
    bool neg = buf[from] == '-';
    size_t i = neg ? from + 1 : from;
    if (i >= to || to - i > 18)
        return false;
    long long v = 0;
    for (; i < to; i++) {
        if (buf[i] < '0' || buf[i] > '9')
            return false;
        v = v * 10 + (buf[i] - '0'); /* 18 digits cannot overflow */
    }
    *out = neg ? -v : v;
    return true;
}

/* A multibulk request's count line: RESP_DONE with p->mb_count set and
 * p->mb_pos after it, or another status. */
static enum resp_status parse_count(struct resp_parser *p, const char *buf,
                                    size_t len, size_t *consumed, char *err,
                                    size_t err_cap)
{
    long eol = find_crlf(p, buf, 1, len);
    if (eol < 0) {
        if (len > 32) {
            set_err(err, err_cap, "Protocol error: invalid multibulk length");
            return RESP_PROTO;
        }
        return RESP_INCOMPLETE;
    }
    long long n;
    if (!parse_len(buf, 1, (size_t)eol, &n)) {
        set_err(err, err_cap, "Protocol error: invalid multibulk length");
        return RESP_PROTO;
    }
    if (n <= 0) {
        *consumed = (size_t)eol + 2;
        return RESP_EMPTY;
    }
    if ((unsigned long long)n > p->max_args) {
        set_err(err, err_cap, "Protocol error: too many arguments in request");
        return RESP_TOO_BIG;
    }
    p->mb_count = (size_t)n;
    p->mb_done = 0;
    p->mb_pos = (size_t)eol + 2;
    return RESP_DONE;
}

/* Reads arguments from where the last call stopped. While the request is
 * incomplete, args[i].data holds argument i's offset from buf. */
static enum resp_status parse_multibulk(struct resp_parser *p, const char *buf,
                                        size_t len, size_t *consumed,
                                        size_t *argc, struct resp_arg **argv,
                                        char *err, size_t err_cap)
{
    if (p->mb_count == 0) {
        enum resp_status st = parse_count(p, buf, len, consumed, err, err_cap);
        if (st != RESP_DONE)
            return st;
    }
    size_t n = p->mb_count;
    size_t pos = p->mb_pos;
    for (size_t i = p->mb_done; i < n; i++) {
        /* Where to resume if this argument is not all here. */
        p->mb_done = i;
        p->mb_pos = pos;
        if (pos >= len)
            return RESP_INCOMPLETE;
        if (buf[pos] != '$') {
            char msg[64];
            unsigned char c = (unsigned char)buf[pos];
            snprintf(msg, sizeof msg, "Protocol error: expected '$', got '%c'",
                     c >= 32 && c < 127 ? c : '?');
            set_err(err, err_cap, msg);
            return RESP_PROTO;
        }
        long eol = find_crlf(p, buf, pos + 1, len);
        if (eol < 0) {
            if (len - pos > 32) {
                set_err(err, err_cap, "Protocol error: invalid bulk length");
                return RESP_PROTO;
            }
            return RESP_INCOMPLETE;
        }
        long long blen;
        if (!parse_len(buf, pos + 1, (size_t)eol, &blen) || blen < 0) {
            set_err(err, err_cap, "Protocol error: invalid bulk length");
            return RESP_PROTO;
        }
        size_t body = (size_t)eol + 2;
        /* Refuse by the declared size before the body arrives. */
        if ((unsigned long long)blen > p->max_request_bytes ||
            body + (size_t)blen + 2 > p->max_request_bytes) {
            set_err(err, err_cap, "Protocol error: request too big");
            return RESP_TOO_BIG;
        }
        if (len - body < (size_t)blen + 2) {
            /* Nothing can change before the whole body is there. */
            p->need = body + (size_t)blen + 2;
            return RESP_INCOMPLETE;
        }
        if (buf[body + (size_t)blen] != '\r' ||
            buf[body + (size_t)blen + 1] != '\n') {
            set_err(err, err_cap, "Protocol error: bulk not followed by CRLF");
            return RESP_PROTO;
        }
        if (!args_reserve(p, i + 1)) {
            set_err(err, err_cap, "Protocol error: out of memory");
            return RESP_TOO_BIG;
        }
        p->args[i].data = (const char *)(uintptr_t)body; /* an offset */
        p->args[i].len = (size_t)blen;
        pos = body + (size_t)blen + 2;
    }
    for (size_t i = 0; i < n; i++)
        p->args[i].data = buf + (uintptr_t)p->args[i].data;
    resp_parser_reset(p);
    *consumed = pos;
    *argc = n;
    *argv = p->args;
    return RESP_DONE;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Splits an inline line into arguments as redis-cli does: spaces separate;
 * "..." with \n \r \t \b \a \" \\ \xHH escapes; '...' with \' only. The
 * decoded bytes go to p->inline_buf (never longer than the line). */
static enum resp_status split_inline(struct resp_parser *p, const char *line,
                                     size_t n, size_t *argc, char *err,
                                     size_t err_cap)
{
    if (p->inline_cap < n + 1) {
        char *b = realloc(p->inline_buf, n + 1);
        if (b == NULL) {
            set_err(err, err_cap, "Protocol error: out of memory");
            return RESP_TOO_BIG;
        }
        p->inline_buf = b;
        p->inline_cap = n + 1;
    }
    char *out = p->inline_buf;
    size_t o = 0, count = 0, i = 0;
    /* Arguments are recorded as offsets first: args may be reallocated. */
    for (;;) {
        while (i < n && (line[i] == ' ' || line[i] == '\t'))
            i++;
        if (i >= n)
            break;
        size_t start = o;
        bool in_dq = false, in_sq = false, done = false;
        while (!done) {
            if (i >= n) {
                if (in_dq || in_sq) {
                    set_err(err, err_cap,
                            "Protocol error: unbalanced quotes in request");
                    return RESP_PROTO;
                }
                done = true;
            } else if (in_dq) {
                if (line[i] == '\\' && i + 3 < n && line[i + 1] == 'x' &&
                    hex_digit(line[i + 2]) >= 0 &&
                    hex_digit(line[i + 3]) >= 0) {
                    out[o++] = (char)(hex_digit(line[i + 2]) * 16 +
                                      hex_digit(line[i + 3]));
                    i += 4;
                } else if (line[i] == '\\' && i + 1 < n) {
                    char c = line[i + 1];
                    out[o++] = c == 'n'   ? '\n'
                               : c == 'r' ? '\r'
                               : c == 't' ? '\t'
                               : c == 'b' ? '\b'
                               : c == 'a' ? '\a'
                                          : c;
                    i += 2;
                } else if (line[i] == '"') {
                    /* A closing quote must end the argument. */
                    if (i + 1 < n && line[i + 1] != ' ' &&
                        line[i + 1] != '\t') {
                        set_err(err, err_cap,
                                "Protocol error: unbalanced quotes in request");
                        return RESP_PROTO;
                    }
                    i++;
                    done = true;
                } else {
                    out[o++] = line[i++];
                }
            } else if (in_sq) {
                if (line[i] == '\\' && i + 1 < n && line[i + 1] == '\'') {
                    out[o++] = '\'';
                    i += 2;
                } else if (line[i] == '\'') {
                    if (i + 1 < n && line[i + 1] != ' ' &&
                        line[i + 1] != '\t') {
                        set_err(err, err_cap,
                                "Protocol error: unbalanced quotes in request");
                        return RESP_PROTO;
                    }
                    i++;
                    done = true;
                } else {
                    out[o++] = line[i++];
                }
            } else if (line[i] == ' ' || line[i] == '\t') {
                done = true;
            } else if (line[i] == '"') {
                in_dq = true;
                i++;
            } else if (line[i] == '\'') {
                in_sq = true;
                i++;
            } else {
                out[o++] = line[i++];
            }
        }
        if (count + 1 > p->max_args) {
            set_err(err, err_cap,
                    "Protocol error: too many arguments in request");
            return RESP_TOO_BIG;
        }
        if (!args_reserve(p, count + 1)) {
            set_err(err, err_cap, "Protocol error: out of memory");
            return RESP_TOO_BIG;
        }
        p->args[count].data = (const char *)(uintptr_t)start; /* offset */
        p->args[count].len = o - start;
        count++;
    }
    for (size_t a = 0; a < count; a++)
        p->args[a].data = out + (uintptr_t)p->args[a].data;
    *argc = count;
    return RESP_DONE;
}

static enum resp_status parse_inline(struct resp_parser *p, const char *buf,
                                     size_t len, size_t *consumed, size_t *argc,
                                     struct resp_arg **argv, char *err,
                                     size_t err_cap)
{
    size_t from = p->inline_scanned < len ? p->inline_scanned : 0;
    const char *nl = memchr(buf + from, '\n', len - from);
    p->examined += nl != NULL ? (size_t)(nl - buf) + 1 - from : len - from;
    if (nl == NULL) {
        if (len > p->max_request_bytes) {
            set_err(err, err_cap, "Protocol error: too big inline request");
            return RESP_TOO_BIG;
        }
        p->inline_scanned = len;
        return RESP_INCOMPLETE;
    }
    p->inline_scanned = 0;
    size_t line_len = (size_t)(nl - buf);
    *consumed = line_len + 1;
    if (line_len > p->max_request_bytes) {
        set_err(err, err_cap, "Protocol error: too big inline request");
        return RESP_TOO_BIG;
    }
    if (line_len > 0 && buf[line_len - 1] == '\r')
        line_len--;
    enum resp_status st = split_inline(p, buf, line_len, argc, err, err_cap);
    if (st != RESP_DONE)
        return st;
    if (*argc == 0)
        return RESP_EMPTY;
    *argv = p->args;
    return RESP_DONE;
}

enum resp_status resp_parse(struct resp_parser *p, const char *buf, size_t len,
                            size_t *consumed, size_t *argc,
                            struct resp_arg **argv, char *err, size_t err_cap)
{
    *consumed = 0;
    *argc = 0;
    if (err_cap > 0)
        err[0] = '\0';
    if (len == 0)
        return RESP_INCOMPLETE;
    p->need = 0;
    enum resp_status st =
        buf[0] == '*'
            ? parse_multibulk(p, buf, len, consumed, argc, argv, err, err_cap)
            : parse_inline(p, buf, len, consumed, argc, argv, err, err_cap);
    if (st != RESP_INCOMPLETE)
        resp_parser_reset(p);
    return st;
}

size_t resp_need(const struct resp_parser *p)
{
    return p->need;
}

/* ---- replies ---- */

void resp_simple(struct evbuffer *out, const char *s)
{
    evbuffer_add_printf(out, "+%s\r\n", s);
}

uint64_t resp_errors_written;

void resp_error(struct evbuffer *out, const char *msg)
{
    resp_errors_written++;
    evbuffer_add(out, "-", 1);
    /* A CR or LF would end the reply early: replace them. */
    for (const char *c = msg; *c; c++)
        evbuffer_add(out, (*c == '\r' || *c == '\n') ? " " : c, 1);
    evbuffer_add(out, "\r\n", 2);
}

void resp_errorf(struct evbuffer *out, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    resp_error(out, msg);
}

void resp_int(struct evbuffer *out, int64_t v)
{
    evbuffer_add_printf(out, ":%lld\r\n", (long long)v);
}

void resp_bulk(struct evbuffer *out, const void *p, size_t len)
{
    evbuffer_add_printf(out, "$%zu\r\n", len);
    evbuffer_add(out, p, len);
    evbuffer_add(out, "\r\n", 2);
}

void resp_bulk_str(struct evbuffer *out, const char *s)
{
    resp_bulk(out, s, strlen(s));
}

void resp_null(struct evbuffer *out)
{
    evbuffer_add(out, "$-1\r\n", 5);
}

void resp_null_array(struct evbuffer *out)
{
    evbuffer_add(out, "*-1\r\n", 5);
}

void resp_array(struct evbuffer *out, size_t n)
{
    evbuffer_add_printf(out, "*%zu\r\n", n);
}
