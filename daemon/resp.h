/*
 * resp.h - the Redis protocol (RESP2): parsing requests, writing replies.
 *
 * A request is either a multibulk array ("*2\r\n$3\r\nGET\r\n$1\r\na\r\n")
 * or an inline command ("GET a\r\n", as typed into telnet or redis-cli's
 * inline mode; quotes as in redis-cli: "..." with \n \r \t \" \\ \xHH escapes,
 * and '...'). The parser works on a contiguous buffer that may hold several
 * pipelined requests, or part of one.
 */
#ifndef SHMKVD_RESP_H
#define SHMKVD_RESP_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;

struct resp_arg {
    const char *data; /* points into the parsed buffer (multibulk) or into
                         the parser's own storage (inline) */
    size_t len;
};

struct resp_parser {
    /* Limits, set by the caller before use. */
    size_t max_request_bytes; /* one whole request, framing included */
    size_t max_args;          /* arguments in one request */
    /* Internal: argument array and inline-decoding storage, grown as
     * needed and freed by resp_parser_free. */
    struct resp_arg *args;
    size_t args_cap;
    char *inline_buf;
    size_t inline_cap;
    /* Set by resp_parse: see resp_need. */
    size_t need;
    /* A request received in part, resumed where the last call stopped
     * (see resp_parse): for a multibulk one, the arguments it declared
     * (0: none in progress), how many are read (their offsets are in
     * args), and where the next one's header begins; for an inline one,
     * how far no newline was found. */
    size_t mb_count;
    size_t mb_done;
    size_t mb_pos;
    size_t inline_scanned;
    /* Bytes the parser has looked at since init: linear in the bytes it
     * was given, however they were split (for the tests). */
    uint64_t examined;
};

enum resp_status {
    RESP_DONE = 0,       /* one request parsed: *consumed bytes used */
    RESP_INCOMPLETE = 1, /* more bytes needed (nothing consumed) */
    RESP_EMPTY = 2,      /* an empty inline line: *consumed bytes to skip */
    RESP_PROTO = -1,     /* protocol error: err says why; close after
                            replying with it */
    RESP_TOO_BIG = -2,   /* over max_request_bytes or max_args */
};

void resp_parser_init(struct resp_parser *p, size_t max_request_bytes,
                      size_t max_args);
void resp_parser_free(struct resp_parser *p);
/* Forgets a request in progress (see resp_parse). */
void resp_parser_reset(struct resp_parser *p);

/* Parses the first request in buf[0, len). On RESP_DONE, *argc and *argv
 * describe it (valid until the next call on p, and while buf is
 * unchanged) and *consumed is its length. On RESP_PROTO / RESP_TOO_BIG, err
 * holds a message in Redis's style ("Protocol error: invalid bulk length").
 * The parser never reads past buf + len and never allocates more than the
 * limits allow.
 *
 * Parsing is incremental: after RESP_INCOMPLETE the parser remembers how
 * far it got, and the next call must be given the same request's bytes
 * from its start again, with more after them (at any address), so that
 * the work on a request is linear in its length however it arrives. A
 * caller that gives it other bytes instead calls resp_parser_reset first.
 * Every other status leaves nothing in progress. */
enum resp_status resp_parse(struct resp_parser *p, const char *buf, size_t len,
                            size_t *consumed, size_t *argc,
                            struct resp_arg **argv, char *err, size_t err_cap);

/* After resp_parse returned RESP_INCOMPLETE: the fewest bytes, from the
 * request's start, with which parsing it again can give another answer
 * (the end of the bulk string it stopped in), or 0 if any byte might. A
 * caller holding fewer bytes of the same request can skip the parse and
 * the copying before it, so that a large value arriving in many reads is
 * not parsed again on each. resp_parse itself does not use it. */
size_t resp_need(const struct resp_parser *p);

/* Replies, appended to out. */
void resp_simple(struct evbuffer *out, const char *s); /* +OK */
/* Error replies written so far (the event loop's thread only): a command
 * whose run adds one failed. */
extern uint64_t resp_errors_written;
void resp_error(struct evbuffer *out, const char *msg); /* -ERR ... */
void resp_errorf(struct evbuffer *out, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void resp_int(struct evbuffer *out, int64_t v);                  /* :1 */
void resp_bulk(struct evbuffer *out, const void *p, size_t len); /* $n */
void resp_bulk_str(struct evbuffer *out, const char *s);
void resp_null(struct evbuffer *out);            /* $-1 */
void resp_null_array(struct evbuffer *out);      /* *-1 */
void resp_array(struct evbuffer *out, size_t n); /* *n header */

#endif
