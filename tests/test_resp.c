/*
 * RESP2 tests: multibulk and inline requests (quotes and escapes as in
 * redis-cli), pipelined requests in one buffer, partial requests (every
 * prefix is incomplete and consumes nothing), protocol errors with Redis's
 * messages, the size and argument limits (refused as soon as a header
 * declares too much, before the data arrives), and the reply writers byte
 * for byte. Buffers handed to the parser are exactly as long as the bytes
 * in them, so the address sanitizer catches a read past the end.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "resp.h"

#define MAX_REQUEST 1024
#define MAX_ARGS 16

struct fixture {
    struct resp_parser p;
    char *buf; /* a heap copy of the bytes last parsed, exactly their size */
    size_t len;
    size_t consumed, argc;
    struct resp_arg *argv;
    char err[256];
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    if (f == NULL)
        return -1;
    resp_parser_init(&f->p, MAX_REQUEST, MAX_ARGS);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    resp_parser_free(&f->p);
    free(f->buf);
    free(f);
    return 0;
}

/* Parses a heap copy of data[0, len); the copy stays until the next call,
 * so f->argv can be checked. */
static enum resp_status parse(struct fixture *f, const char *data, size_t len)
{
    /* The parser resumes a request it found incomplete: bytes that do not
     * begin with the last ones given are another request. */
    if (f->buf == NULL || len < f->len || memcmp(data, f->buf, f->len) != 0)
        resp_parser_reset(&f->p);
    free(f->buf);
    f->len = len;
    f->buf = malloc(len ? len : 1);
    assert_non_null(f->buf);
    memcpy(f->buf, data, len);
    f->argv = NULL;
    f->consumed = f->argc = 12345;
    memset(f->err, 'x', sizeof f->err);
    return resp_parse(&f->p, f->buf, len, &f->consumed, &f->argc, &f->argv,
                      f->err, sizeof f->err);
}

#define PARSE(f, lit) parse((f), (lit), sizeof(lit) - 1)

static void assert_arg(const struct fixture *f, size_t i, const char *want,
                       size_t want_len)
{
    assert_true(i < f->argc);
    const struct resp_arg *a = &f->argv[i];
    if (a->len != want_len || memcmp(a->data, want, want_len) != 0)
        fail_msg("argument %zu: got %zu bytes '%.*s', wanted %zu bytes '%.*s'",
                 i, a->len, (int)a->len, a->data, want_len, (int)want_len,
                 want);
}

#define ARG(f, i, lit) assert_arg((f), (i), (lit), sizeof(lit) - 1)

/* Every argument lies inside the request's bytes. */
static void assert_args_in_request(const struct fixture *f)
{
    for (size_t i = 0; i < f->argc; i++) {
        const char *d = f->argv[i].data;
        assert_true(d >= f->buf);
        assert_true(d + f->argv[i].len <= f->buf + f->consumed);
    }
}

/* Every argument lies in the parser's inline storage. */
static void assert_args_in_storage(const struct fixture *f)
{
    for (size_t i = 0; i < f->argc; i++) {
        const char *d = f->argv[i].data;
        assert_true(d >= f->p.inline_buf);
        assert_true(d + f->argv[i].len <= f->p.inline_buf + f->p.inline_cap);
    }
}

static void expect_done(struct fixture *f, const char *data, size_t len,
                        size_t consumed, size_t argc)
{
    enum resp_status st = parse(f, data, len);
    if (st != RESP_DONE)
        fail_msg("'%.*s': status %d (%s), wanted RESP_DONE", (int)len, data, st,
                 f->err);
    assert_int_equal(f->consumed, consumed);
    assert_int_equal(f->argc, argc);
    assert_non_null(f->argv);
    assert_string_equal(f->err, "");
}

#define EXPECT_DONE(f, lit, argc)                                              \
    expect_done((f), (lit), sizeof(lit) - 1, sizeof(lit) - 1, (argc))

/* Asserts that data is refused with status st and exactly the message. */
static void expect_error(struct fixture *f, const char *data, size_t len,
                         enum resp_status st, const char *msg)
{
    enum resp_status got = parse(f, data, len);
    if (got != st)
        fail_msg("'%.*s': status %d (%s), wanted %d", (int)len, data, got,
                 f->err, st);
    assert_int_equal(f->argc, 0);
    assert_string_equal(f->err, msg);
}

#define EXPECT_ERROR(f, lit, st, msg)                                          \
    expect_error((f), (lit), sizeof(lit) - 1, (st), (msg))

/* Every proper prefix of a complete request is incomplete and consumes
 * nothing; the whole request gives want with all of it consumed. */
static void expect_prefixes_incomplete(struct fixture *f, const char *data,
                                       size_t len, enum resp_status want)
{
    for (size_t n = 0; n < len; n++) {
        enum resp_status st = parse(f, data, n);
        if (st != RESP_INCOMPLETE)
            fail_msg("%zu-byte prefix of '%.*s': status %d (%s)", n, (int)len,
                     data, st, f->err);
        assert_int_equal(f->consumed, 0);
        assert_int_equal(f->argc, 0);
        assert_string_equal(f->err, "");
    }
    assert_int_equal(parse(f, data, len), want);
    assert_int_equal(f->consumed, len);
}

#define EXPECT_PREFIXES(f, lit, want)                                          \
    expect_prefixes_incomplete((f), (lit), sizeof(lit) - 1, (want))

/* ---- multibulk ---- */

static void test_multibulk(void **state)
{
    struct fixture *f = *state;
    EXPECT_DONE(f, "*2\r\n$3\r\nGET\r\n$1\r\na\r\n", 2);
    ARG(f, 0, "GET");
    ARG(f, 1, "a");
    assert_args_in_request(f);
    assert_ptr_equal(f->argv[0].data, f->buf + 8);

    /* Bodies are binary: CR, LF and NUL inside are data. */
    EXPECT_DONE(f, "*3\r\n$3\r\nSET\r\n$4\r\na\r\nb\r\n$3\r\n\0\r\0\r\n", 3);
    ARG(f, 1, "a\r\nb");
    ARG(f, 2, "\0\r\0");
    assert_args_in_request(f);

    EXPECT_DONE(f, "*2\r\n$4\r\nECHO\r\n$0\r\n\r\n", 2);
    ARG(f, 1, "");

    EXPECT_DONE(f, "*1\r\n$4\r\nPING\r\n", 1);
    ARG(f, 0, "PING");

    /* Leading zeros in lengths are numbers like any other. */
    EXPECT_DONE(f, "*01\r\n$004\r\nPING\r\n", 1);
    ARG(f, 0, "PING");
}

static void test_multibulk_empty(void **state)
{
    struct fixture *f = *state;
    /* An empty or null array is skipped, as Redis does. */
    assert_int_equal(PARSE(f, "*0\r\n"), RESP_EMPTY);
    assert_int_equal(f->consumed, 4);
    assert_int_equal(f->argc, 0);
    assert_int_equal(PARSE(f, "*-1\r\n*1\r\n"), RESP_EMPTY);
    assert_int_equal(f->consumed, 5);
    assert_int_equal(PARSE(f, "*-999999999999999999\r\n"), RESP_EMPTY);
    assert_int_equal(f->consumed, 22);
}

static void test_max_args_exactly(void **state)
{
    struct fixture *f = *state;
    char req[512];
    int n = snprintf(req, sizeof req, "*%d\r\n", MAX_ARGS);
    for (int i = 0; i < MAX_ARGS; i++)
        n += snprintf(req + n, sizeof req - (size_t)n, "$2\r\n%02d\r\n", i);
    expect_done(f, req, (size_t)n, (size_t)n, MAX_ARGS);
    for (size_t i = 0; i < MAX_ARGS; i++) {
        char want[3];
        snprintf(want, sizeof want, "%02zu", i);
        assert_arg(f, i, want, 2);
    }
    assert_args_in_request(f);

    n = 0;
    for (int i = 0; i < MAX_ARGS; i++)
        n +=
            snprintf(req + n, sizeof req - (size_t)n, "%sa%d", i ? " " : "", i);
    n += snprintf(req + n, sizeof req - (size_t)n, "\r\n");
    expect_done(f, req, (size_t)n, (size_t)n, MAX_ARGS);
    assert_arg(f, 15, "a15", 3);
    assert_args_in_storage(f);
}

/* ---- inline ---- */

static void test_inline(void **state)
{
    struct fixture *f = *state;
    EXPECT_DONE(f, "GET a\r\n", 2);
    ARG(f, 0, "GET");
    ARG(f, 1, "a");
    assert_args_in_storage(f);

    /* A bare LF ends a line too; blanks separate and surround. */
    EXPECT_DONE(f, "PING\n", 1);
    ARG(f, 0, "PING");
    EXPECT_DONE(f, "  SET\t\tkey   value \t\r\n", 3);
    ARG(f, 0, "SET");
    ARG(f, 1, "key");
    ARG(f, 2, "value");

    /* Only the CR before the LF is framing. */
    EXPECT_DONE(f, "GE\rT a\r\r\n", 2);
    ARG(f, 0, "GE\rT");
    ARG(f, 1, "a\r");

    /* NUL bytes in an inline line are data. */
    EXPECT_DONE(f, "A\0B\n", 1);
    ARG(f, 0, "A\0B");
}

static void test_inline_double_quotes(void **state)
{
    struct fixture *f = *state;
    EXPECT_DONE(f, "SET \"hello world\" \"\"\r\n", 3);
    ARG(f, 1, "hello world");
    ARG(f, 2, "");

    EXPECT_DONE(
        f, "SET k \"a\\nb\\r\\t\\\"\\\\\\x41\\x7a\\x4A\\xZZ\\q\\b\\a\"\r\n", 3);
    ARG(f, 2, "a\nb\r\t\"\\AzJxZZq\b\a");

    EXPECT_DONE(f, "SET k \"\\x00\\xff\\xFf\"\r\n", 3);
    ARG(f, 2, "\0\xff\xff");

    /* \x needs two hex digits; short of them it is a plain escaped x. */
    EXPECT_DONE(f, "E \"\\x4\" \"\\x\"\n", 3);
    ARG(f, 1, "x4");
    ARG(f, 2, "x");

    /* A quote inside a word opens a quoted part of the same argument. */
    EXPECT_DONE(f, "SET ab\"cd ef\" x\r\n", 3);
    ARG(f, 1, "abcd ef");

    /* Quotes of the other kind are plain characters. */
    EXPECT_DONE(f, "E \"it's\"\n", 2);
    ARG(f, 1, "it's");
    assert_args_in_storage(f);
}

static void test_inline_single_quotes(void **state)
{
    struct fixture *f = *state;
    EXPECT_DONE(f, "SET 'it\\'s' 'a\\nb' 'say \"hi\"' ''\r\n", 5);
    ARG(f, 1, "it's");
    ARG(f, 2, "a\\nb"); /* no escapes but \' */
    ARG(f, 3, "say \"hi\"");
    ARG(f, 4, "");
    EXPECT_DONE(f, "E 'a\\\\b'\n", 2);
    ARG(f, 1, "a\\\\b"); /* a backslash not before ' is itself */
    assert_args_in_storage(f);
}

static void test_inline_empty(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(PARSE(f, "\r\n"), RESP_EMPTY);
    assert_int_equal(f->consumed, 2);
    assert_int_equal(f->argc, 0);
    assert_int_equal(PARSE(f, "\nPING\r\n"), RESP_EMPTY);
    assert_int_equal(f->consumed, 1);
    assert_int_equal(PARSE(f, " \t  \r\n"), RESP_EMPTY);
    assert_int_equal(f->consumed, 6);
    assert_string_equal(f->err, "");
}

/* ---- streams ---- */

static void test_pipelined(void **state)
{
    struct fixture *f = *state;
    static const char stream[] = "*1\r\n$4\r\nPING\r\n"
                                 "PING\r\n"
                                 "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
                                 "\r\n"
                                 "*0\r\n"
                                 "ECHO \"a b\"\n"
                                 "*2\r\n$3\r\nGET\r\n$1\r";
    static const struct {
        enum resp_status st;
        size_t consumed, argc;
        const char *arg0, *arg1;
    } want[] = {
        {RESP_DONE, 14, 1, "PING", NULL},    {RESP_DONE, 6, 1, "PING", NULL},
        {RESP_DONE, 20, 2, "GET", "k"},      {RESP_EMPTY, 2, 0, NULL, NULL},
        {RESP_EMPTY, 4, 0, NULL, NULL},      {RESP_DONE, 11, 2, "ECHO", "a b"},
        {RESP_INCOMPLETE, 0, 0, NULL, NULL},
    };
    char *buf = malloc(sizeof stream - 1);
    assert_non_null(buf);
    memcpy(buf, stream, sizeof stream - 1);
    size_t pos = 0, len = sizeof stream - 1;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        size_t consumed, argc;
        struct resp_arg *argv = NULL;
        char err[128];
        enum resp_status st = resp_parse(&f->p, buf + pos, len - pos, &consumed,
                                         &argc, &argv, err, sizeof err);
        if (st != want[i].st)
            fail_msg("request %zu at %zu: status %d (%s)", i, pos, st, err);
        assert_int_equal(consumed, want[i].consumed);
        assert_int_equal(argc, want[i].argc);
        if (want[i].arg0 != NULL) {
            assert_int_equal(argv[0].len, strlen(want[i].arg0));
            assert_memory_equal(argv[0].data, want[i].arg0, argv[0].len);
        }
        if (want[i].arg1 != NULL) {
            assert_int_equal(argv[1].len, strlen(want[i].arg1));
            assert_memory_equal(argv[1].data, want[i].arg1, argv[1].len);
        }
        pos += consumed;
    }
    assert_int_equal(pos, len - 16);
    free(buf);
}

static void test_partial_requests(void **state)
{
    struct fixture *f = *state;
    EXPECT_PREFIXES(f, "*2\r\n$3\r\nGET\r\n$1\r\na\r\n", RESP_DONE);
    EXPECT_PREFIXES(f, "*3\r\n$3\r\nSET\r\n$4\r\na\r\nb\r\n$0\r\n\r\n",
                    RESP_DONE);
    EXPECT_PREFIXES(f, "*1\r\n$10\r\n0123456789\r\n", RESP_DONE);
    EXPECT_PREFIXES(f, "*0\r\n", RESP_EMPTY);
    EXPECT_PREFIXES(f, "*-1\r\n", RESP_EMPTY);
    EXPECT_PREFIXES(f, "GET a\r\n", RESP_DONE);
    EXPECT_PREFIXES(f, "SET k \"a\\x41\\\" b\" 'c\\'d'\r\n", RESP_DONE);
    EXPECT_PREFIXES(f, "PING\n", RESP_DONE);
    EXPECT_PREFIXES(f, "\r\n", RESP_EMPTY);
    EXPECT_PREFIXES(f, "   \n", RESP_EMPTY);

    /* A longest allowed request is waited for, however it is cut. */
    char req[MAX_REQUEST];
    int n = snprintf(req, sizeof req, "*1\r\n$%d\r\n", MAX_REQUEST - 13);
    memset(req + n, 'v', (size_t)(MAX_REQUEST - 13));
    memcpy(req + MAX_REQUEST - 2, "\r\n", 2);
    expect_prefixes_incomplete(f, req, MAX_REQUEST, RESP_DONE);
    assert_int_equal(f->argv[0].len, MAX_REQUEST - 13);

    /* The bytes of the next request are not consumed. */
    assert_int_equal(PARSE(f, "*1\r\n$4\r\nPING\r\n*1"), RESP_DONE);
    assert_int_equal(f->consumed, 14);
    assert_int_equal(PARSE(f, "PING\r\nPI"), RESP_DONE);
    assert_int_equal(f->consumed, 6);
}

/* ---- protocol errors ---- */

static void test_bad_multibulk_count(void **state)
{
    struct fixture *f = *state;
    static const char msg[] = "Protocol error: invalid multibulk length";
    EXPECT_ERROR(f, "*abc\r\n", RESP_PROTO, msg);
    EXPECT_ERROR(f, "*\r\n", RESP_PROTO, msg);
    EXPECT_ERROR(f, "*-\r\n", RESP_PROTO, msg);
    EXPECT_ERROR(f, "*1x\r\n", RESP_PROTO, msg);
    EXPECT_ERROR(f, "* 1\r\n", RESP_PROTO, msg);
    EXPECT_ERROR(f, "*+1\r\n", RESP_PROTO, msg);
    EXPECT_ERROR(f, "*1\n$4\r\nPING\r\n", RESP_PROTO, msg);
    EXPECT_ERROR(f, "*99999999999999999999\r\n", RESP_PROTO, msg);
    EXPECT_ERROR(f, "*-9223372036854775808\r\n", RESP_PROTO, msg);
    /* 19 digits overflow a 64-bit signed number. */
    EXPECT_ERROR(f, "*9223372036854775808\r\n", RESP_PROTO, msg);
    EXPECT_ERROR(f, "*9999999999999999999\r\n", RESP_PROTO, msg);
    /* A count line that never ends is refused without waiting. */
    EXPECT_ERROR(f, "*111111111111111111111111111111111", RESP_PROTO, msg);
}

static void test_bad_bulk(void **state)
{
    struct fixture *f = *state;
    static const char bad_len[] = "Protocol error: invalid bulk length";
    EXPECT_ERROR(f, "*1\r\n$-1\r\n", RESP_PROTO, bad_len);
    EXPECT_ERROR(f, "*1\r\n$-5\r\nabc\r\n", RESP_PROTO, bad_len);
    EXPECT_ERROR(f, "*1\r\n$abc\r\n", RESP_PROTO, bad_len);
    EXPECT_ERROR(f, "*1\r\n$\r\n", RESP_PROTO, bad_len);
    EXPECT_ERROR(f, "*1\r\n$3x\r\nabc\r\n", RESP_PROTO, bad_len);
    EXPECT_ERROR(f, "*1\r\n$9223372036854775808\r\n", RESP_PROTO, bad_len);
    EXPECT_ERROR(f, "*1\r\n$99999999999999999999\r\n", RESP_PROTO, bad_len);
    EXPECT_ERROR(f, "*1\r\n$3333333333333333333333333333333333", RESP_PROTO,
                 bad_len);

    EXPECT_ERROR(f, "*1\r\nPING\r\n", RESP_PROTO,
                 "Protocol error: expected '$', got 'P'");
    EXPECT_ERROR(f, "*2\r\n$1\r\na\r\n:1\r\n", RESP_PROTO,
                 "Protocol error: expected '$', got ':'");
    EXPECT_ERROR(f, "*1\r\n\x01", RESP_PROTO,
                 "Protocol error: expected '$', got '?'");

    static const char no_crlf[] = "Protocol error: bulk not followed by CRLF";
    EXPECT_ERROR(f, "*1\r\n$3\r\nabcde\r\n", RESP_PROTO, no_crlf);
    EXPECT_ERROR(f, "*1\r\n$3\r\nabc\n\n", RESP_PROTO, no_crlf);
    EXPECT_ERROR(f, "*1\r\n$3\r\nabc\r\r", RESP_PROTO, no_crlf);
    EXPECT_ERROR(f, "*2\r\n$1\r\na\r\n$1\r\nbXY", RESP_PROTO, no_crlf);
}

static void test_unbalanced_quotes(void **state)
{
    struct fixture *f = *state;
    static const char msg[] = "Protocol error: unbalanced quotes in request";
    EXPECT_ERROR(f, "SET \"a b\r\n", RESP_PROTO, msg);
    EXPECT_ERROR(f, "SET 'a b\r\n", RESP_PROTO, msg);
    EXPECT_ERROR(f, "SET \"a\"b\r\n", RESP_PROTO, msg);
    EXPECT_ERROR(f, "SET 'a'b\n", RESP_PROTO, msg);
    EXPECT_ERROR(f, "SET \"a\"'b'\n", RESP_PROTO, msg);
    EXPECT_ERROR(f, "SET \"a\\\"\n", RESP_PROTO, msg);
    EXPECT_ERROR(f, "SET \"a\\\n", RESP_PROTO, msg);
    EXPECT_ERROR(f, "SET 'a\\'\n", RESP_PROTO, msg);
    EXPECT_ERROR(f, "\"\n", RESP_PROTO, msg);
    /* The CR of CRLF is not part of the line. */
    EXPECT_ERROR(f, "SET \"a\r\n", RESP_PROTO, msg);
    /* The line is consumed: the connection may reply and carry on. */
    assert_int_equal(PARSE(f, "SET \"a\nPING\n"), RESP_PROTO);
    assert_int_equal(f->consumed, 7);
}

static void test_parser_reusable_after_error(void **state)
{
    struct fixture *f = *state;
    EXPECT_ERROR(f, "*1\r\n$x\r\n", RESP_PROTO,
                 "Protocol error: invalid bulk length");
    EXPECT_DONE(f, "*1\r\n$4\r\nPING\r\n", 1);
    EXPECT_ERROR(f, "a b c d e f g h i j k l m n o p q\r\n", RESP_TOO_BIG,
                 "Protocol error: too many arguments in request");
    EXPECT_DONE(f, "GET x\n", 2);
    ARG(f, 1, "x");
}

static void test_error_buffer(void **state)
{
    struct fixture *f = *state;
    size_t consumed, argc;
    struct resp_arg *argv;
    /* No buffer at all. */
    assert_int_equal(
        resp_parse(&f->p, "*x\r\n", 4, &consumed, &argc, &argv, NULL, 0),
        RESP_PROTO);
    assert_int_equal(
        resp_parse(&f->p, "GET a\r\n", 7, &consumed, &argc, &argv, NULL, 0),
        RESP_DONE);
    /* A short one holds the start of the message. */
    char err[16];
    memset(err, 'x', sizeof err);
    assert_int_equal(
        resp_parse(&f->p, "*x\r\n", 4, &consumed, &argc, &argv, err, 10),
        RESP_PROTO);
    assert_string_equal(err, "Protocol ");
    for (size_t i = 10; i < sizeof err; i++)
        assert_int_equal(err[i], 'x');
}

/* ---- limits ---- */

static void test_too_many_args(void **state)
{
    struct fixture *f = *state;
    static const char msg[] = "Protocol error: too many arguments in request";
    /* Refused on the count alone, before any argument arrives. */
    EXPECT_ERROR(f, "*17\r\n", RESP_TOO_BIG, msg);
    EXPECT_ERROR(f, "*999999999999999999\r\n", RESP_TOO_BIG, msg);
    EXPECT_ERROR(f, "a b c d e f g h i j k l m n o p q\r\n", RESP_TOO_BIG, msg);
    EXPECT_ERROR(f,
                 "\"\" \"\" \"\" \"\" \"\" \"\" \"\" \"\" \"\" \"\" \"\" \"\" "
                 "\"\" \"\" \"\" \"\" \"\"\n",
                 RESP_TOO_BIG, msg);
}

static void test_request_too_big(void **state)
{
    struct fixture *f = *state;
    static const char msg[] = "Protocol error: request too big";
    /* A declared length over the limit is refused as soon as its header
     * is complete: nothing waits for the gigabyte. */
    EXPECT_ERROR(f, "*1\r\n$1073741824\r\n", RESP_TOO_BIG, msg);
    EXPECT_ERROR(f, "*1\r\n$1025\r\n", RESP_TOO_BIG, msg);
    EXPECT_ERROR(f, "*2\r\n$3\r\nSET\r\n$999999999999999999\r\n", RESP_TOO_BIG,
                 msg);
    /* Within the limit, the parser waits for the body. */
    assert_int_equal(PARSE(f, "*1\r\n$1000\r\n"), RESP_INCOMPLETE);
    assert_int_equal(f->consumed, 0);

    /* Arguments that are each small but together too big. */
    char req[2048];
    int n = snprintf(req, sizeof req, "*3\r\n");
    for (int i = 0; i < 2; i++) {
        n += snprintf(req + n, sizeof req - (size_t)n, "$500\r\n");
        memset(req + n, 'a' + i, 500);
        n += 500;
        n += snprintf(req + n, sizeof req - (size_t)n, "\r\n");
    }
    n += snprintf(req + n, sizeof req - (size_t)n, "$500\r\n");
    expect_error(f, req, (size_t)n, RESP_TOO_BIG, msg);

    /* The same with a daemon-sized limit and the gigabyte header. */
    struct resp_parser big;
    resp_parser_init(&big, 4u << 20, 1024);
    size_t consumed, argc;
    struct resp_arg *argv;
    char err[128];
    static const char huge[] = "*2\r\n$3\r\nSET\r\n$1073741824\r\n";
    assert_int_equal(resp_parse(&big, huge, sizeof huge - 1, &consumed, &argc,
                                &argv, err, sizeof err),
                     RESP_TOO_BIG);
    assert_string_equal(err, msg);
    static const char many[] = "*1000000\r\n";
    assert_int_equal(resp_parse(&big, many, sizeof many - 1, &consumed, &argc,
                                &argv, err, sizeof err),
                     RESP_TOO_BIG);
    resp_parser_free(&big);
}

static void test_inline_too_big(void **state)
{
    struct fixture *f = *state;
    static const char msg[] = "Protocol error: too big inline request";
    char *line = malloc(MAX_REQUEST + 3);
    assert_non_null(line);
    memset(line, 'a', MAX_REQUEST + 3);
    /* No newline yet: waits up to the limit, then refuses. */
    assert_int_equal(parse(f, line, MAX_REQUEST), RESP_INCOMPLETE);
    expect_error(f, line, MAX_REQUEST + 1, RESP_TOO_BIG, msg);
    /* A complete line of the limit is accepted, one byte more is not. */
    line[MAX_REQUEST] = '\n';
    expect_done(f, line, MAX_REQUEST + 1, MAX_REQUEST + 1, 1);
    assert_int_equal(f->argv[0].len, MAX_REQUEST);
    line[MAX_REQUEST] = 'a';
    line[MAX_REQUEST + 1] = '\n';
    expect_error(f, line, MAX_REQUEST + 2, RESP_TOO_BIG, msg);
    free(line);
}

static void test_largest_request(void **state)
{
    struct fixture *f = *state;
    /* A request of exactly max_request_bytes, framing included. */
    char req[MAX_REQUEST];
    int n = snprintf(req, sizeof req, "*2\r\n$3\r\nSET\r\n$%d\r\n",
                     MAX_REQUEST - 22);
    assert_int_equal(n, 20);
    memset(req + n, 'v', (size_t)(MAX_REQUEST - 22));
    memcpy(req + MAX_REQUEST - 2, "\r\n", 2);
    expect_done(f, req, MAX_REQUEST, MAX_REQUEST, 2);
    assert_int_equal(f->argv[1].len, MAX_REQUEST - 22);
    assert_args_in_request(f);
}

/* ---- replies ---- */

static void expect_out(struct evbuffer *out, const char *want, size_t len)
{
    size_t got = evbuffer_get_length(out);
    const char *data = (const char *)evbuffer_pullup(out, -1);
    if (got != len || memcmp(data, want, len) != 0)
        fail_msg("wrote %zu bytes '%.*s', wanted %zu bytes '%.*s'", got,
                 (int)got, data, len, (int)len, want);
    evbuffer_drain(out, got);
}

#define EXPECT_OUT(out, lit) expect_out((out), (lit), sizeof(lit) - 1)

static void test_replies(void **state)
{
    (void)state;
    struct evbuffer *out = evbuffer_new();
    assert_non_null(out);

    resp_simple(out, "OK");
    EXPECT_OUT(out, "+OK\r\n");
    resp_simple(out, "");
    EXPECT_OUT(out, "+\r\n");

    resp_error(out, "ERR unknown command");
    EXPECT_OUT(out, "-ERR unknown command\r\n");
    resp_error(out, "ERR a\r\nb\nc\rd");
    EXPECT_OUT(out, "-ERR a  b c d\r\n");
    resp_errorf(out, "ERR wrong number of arguments for '%s' (%d)", "get", 3);
    EXPECT_OUT(out, "-ERR wrong number of arguments for 'get' (3)\r\n");
    resp_errorf(out, "ERR %s", "line\nbreak");
    EXPECT_OUT(out, "-ERR line break\r\n");

    resp_int(out, 0);
    EXPECT_OUT(out, ":0\r\n");
    resp_int(out, -1);
    EXPECT_OUT(out, ":-1\r\n");
    resp_int(out, INT64_MAX);
    EXPECT_OUT(out, ":9223372036854775807\r\n");
    resp_int(out, INT64_MIN);
    EXPECT_OUT(out, ":-9223372036854775808\r\n");

    resp_bulk(out, "hello", 5);
    EXPECT_OUT(out, "$5\r\nhello\r\n");
    resp_bulk(out, "a\0b\r\n", 5);
    EXPECT_OUT(out, "$5\r\na\0b\r\n\r\n");
    resp_bulk(out, "", 0);
    EXPECT_OUT(out, "$0\r\n\r\n");
    resp_bulk_str(out, "value");
    EXPECT_OUT(out, "$5\r\nvalue\r\n");

    resp_null(out);
    EXPECT_OUT(out, "$-1\r\n");
    resp_null_array(out);
    EXPECT_OUT(out, "*-1\r\n");
    resp_array(out, 0);
    EXPECT_OUT(out, "*0\r\n");

    /* Replies append: an array of mixed elements. */
    resp_array(out, 4);
    resp_bulk_str(out, "k");
    resp_int(out, 42);
    resp_null(out);
    resp_simple(out, "QUEUED");
    EXPECT_OUT(out, "*4\r\n$1\r\nk\r\n:42\r\n$-1\r\n+QUEUED\r\n");

    /* A long bulk has its exact length. */
    char big[70000];
    memset(big, 'z', sizeof big);
    resp_bulk(out, big, sizeof big);
    assert_int_equal(evbuffer_get_length(out), 8 + sizeof big + 2);
    const char *data = (const char *)evbuffer_pullup(out, -1);
    assert_memory_equal(data, "$70000\r\n", 8);
    assert_memory_equal(data + 8 + sizeof big, "\r\n", 2);
    evbuffer_drain(out, evbuffer_get_length(out));

    /* resp_errorf keeps at most 1023 bytes of the message. */
    resp_errorf(out, "ERR %2000s", "x");
    assert_int_equal(evbuffer_get_length(out), 1 + 1023 + 2);
    data = (const char *)evbuffer_pullup(out, -1);
    assert_memory_equal(data, "-ERR  ", 6);
    assert_memory_equal(data + 1024, "\r\n", 2);
    evbuffer_free(out);
}

/* An array of bulks written by the reply writers is a request the parser
 * reads back unchanged. */
static void test_replies_parse_back(void **state)
{
    struct fixture *f = *state;
    static const struct resp_arg args[] = {
        {"SET", 3}, {"key\r\n", 5}, {"", 0}, {"\0\0\0", 3}, {"*1\r\n$", 5},
    };
    size_t n = sizeof args / sizeof args[0];
    struct evbuffer *out = evbuffer_new();
    assert_non_null(out);
    resp_array(out, n);
    for (size_t i = 0; i < n; i++)
        resp_bulk(out, args[i].data, args[i].len);
    size_t len = evbuffer_get_length(out);
    expect_done(f, (const char *)evbuffer_pullup(out, -1), len, len, n);
    for (size_t i = 0; i < n; i++)
        assert_arg(f, i, args[i].data, args[i].len);
    evbuffer_free(out);
}

/* resp_need: the end of the bulk string a parse stopped in, 0 where any
 * next byte might change the answer. */
static void test_need(void **state)
{
    struct fixture *f = *state;
    const char head[] = "*2\r\n$3\r\nSET\r\n$10\r\n";
    char req[64];
    snprintf(req, sizeof req, "%s0123", head);
    assert_int_equal(parse(f, req, strlen(req)), RESP_INCOMPLETE);
    assert_int_equal(resp_need(&f->p), strlen(head) + 10 + 2);
    snprintf(req, sizeof req, "%s0123456789\r\n", head);
    assert_int_equal(parse(f, req, strlen(req)), RESP_DONE);
    assert_int_equal(resp_need(&f->p), 0);
    assert_int_equal(PARSE(f, "*2\r\n$3\r\nSE"), RESP_INCOMPLETE);
    assert_int_equal(resp_need(&f->p), 13);
    assert_int_equal(PARSE(f, "*2\r\n$1"), RESP_INCOMPLETE);
    assert_int_equal(resp_need(&f->p), 0);
}

/* A request that arrives a byte at a time is parsed once, not again from
 * its start on each byte: the bytes the parser looks at stay linear in the
 * request's length (only a header line, at most 32 bytes, is looked at
 * again until its end arrives; re-parsing from the start would look at
 * about n^2 / 14 bytes here). */
static void trickle(struct resp_parser *p, const char *req, size_t len,
                    size_t want_argc)
{
    size_t consumed, argc;
    struct resp_arg *argv;
    char err[128];
    uint64_t before = p->examined;
    enum resp_status st = RESP_INCOMPLETE;
    for (size_t n = 1; n <= len; n++) {
        st = resp_parse(p, req, n, &consumed, &argc, &argv, err, sizeof err);
        if (n < len)
            assert_int_equal(st, RESP_INCOMPLETE);
    }
    assert_int_equal(st, RESP_DONE);
    assert_int_equal(consumed, len);
    assert_int_equal(argc, want_argc);
    if (p->examined - before > 4 * (uint64_t)len)
        fail_msg("looked at %llu bytes to parse %zu",
                 (unsigned long long)(p->examined - before), len);
}

static void test_parse_cost_linear(void **state)
{
    (void)state;
    struct resp_parser p;
    resp_parser_init(&p, 8u << 20, 1u << 20);
    const size_t nargs = 100000;
    size_t cap = 32 + nargs * 8;
    char *req = malloc(cap);
    assert_non_null(req);
    size_t len = (size_t)snprintf(req, cap, "*%zu\r\n", nargs);
    for (size_t i = 0; i < nargs; i++) {
        memcpy(req + len, "$1\r\na\r\n", 7);
        len += 7;
    }
    trickle(&p, req, len, nargs);
    /* An inline request likewise: no newline is looked for twice. */
    len = 200000;
    memset(req, 'x', len - 2);
    req[len / 2] = ' ';
    memcpy(req + len - 2, "\r\n", 2);
    trickle(&p, req, len, 2);
    free(req);
    resp_parser_free(&p);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_multibulk),
        T(test_need),
        T(test_multibulk_empty),
        T(test_max_args_exactly),
        T(test_inline),
        T(test_inline_double_quotes),
        T(test_inline_single_quotes),
        T(test_inline_empty),
        T(test_pipelined),
        T(test_partial_requests),
        T(test_bad_multibulk_count),
        T(test_bad_bulk),
        T(test_unbalanced_quotes),
        T(test_parser_reusable_after_error),
        T(test_error_buffer),
        T(test_too_many_args),
        T(test_request_too_big),
        T(test_inline_too_big),
        T(test_largest_request),
        T(test_replies),
        T(test_replies_parse_back),
        T(test_parse_cost_linear),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
