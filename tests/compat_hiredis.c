/*
 * compat_hiredis.c - a C client of shmkvd through hiredis, as programs
 * written against Redis are: commands with binary arguments, a pipeline of
 * many, a MULTI/EXEC transaction, WATCH, SCAN, millisecond TTLs and the
 * replies' types. Run by test_redis_compat.py with the socket's path;
 * exits 0 when every check held, else prints the first that did not.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis.h>

static redisContext *ctx;

static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "compat_hiredis: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

/* Runs a command and checks its reply's type, and integer or text. */
static redisReply *expect(int type, long long integer, const char *text,
                          const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(ctx, fmt, ap);
    va_end(ap);
    if (r == NULL)
        fail("%s: no reply: %s", fmt, ctx->errstr);
    if (r->type != type)
        fail("%s: reply type %d, wanted %d (%s)", fmt, r->type, type,
             r->type == REDIS_REPLY_ERROR ? r->str : "");
    if (type == REDIS_REPLY_INTEGER && r->integer != integer)
        fail("%s: %lld, wanted %lld", fmt, r->integer, integer);
    if (text != NULL && (r->str == NULL || strcmp(r->str, text) != 0))
        fail("%s: \"%s\", wanted \"%s\"", fmt, r->str ? r->str : "", text);
    return r;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: compat_hiredis SOCKET\n");
        return 2;
    }
    ctx = redisConnectUnix(argv[1]);
    if (ctx == NULL || ctx->err)
        fail("connect %s: %s", argv[1], ctx ? ctx->errstr : "no memory");

    /* Binary keys and values, with NUL bytes. */
    const char key[] = {'b', 0, 'k'}, val[] = {0, 1, 2, 0, 3};
    freeReplyObject(expect(REDIS_REPLY_STATUS, 0, "OK", "SET %b %b", key,
                           sizeof key, val, sizeof val));
    redisReply *r =
        expect(REDIS_REPLY_STRING, 0, NULL, "GET %b", key, sizeof key);
    if (r->len != sizeof val || memcmp(r->str, val, sizeof val) != 0)
        fail("GET of a binary value: wrong bytes");
    freeReplyObject(r);
    freeReplyObject(expect(REDIS_REPLY_NIL, 0, NULL, "GET hiredis:absent"));

    /* A pipeline of 1000 commands, answered in order. */
    for (int i = 0; i < 1000; i++)
        redisAppendCommand(ctx, "INCR hiredis:counter");
    for (int i = 0; i < 1000; i++) {
        void *reply;
        if (redisGetReply(ctx, &reply) != REDIS_OK)
            fail("pipeline: %s", ctx->errstr);
        r = reply;
        if (r->type != REDIS_REPLY_INTEGER || r->integer != i + 1)
            fail("pipeline reply %d: %lld", i, r->integer);
        freeReplyObject(r);
    }

    /* A transaction. */
    freeReplyObject(expect(REDIS_REPLY_STATUS, 0, "OK", "MULTI"));
    freeReplyObject(expect(REDIS_REPLY_STATUS, 0, "QUEUED", "SET hiredis:a 1"));
    freeReplyObject(
        expect(REDIS_REPLY_STATUS, 0, "QUEUED", "INCRBY hiredis:a 41"));
    freeReplyObject(expect(REDIS_REPLY_STATUS, 0, "QUEUED", "GET hiredis:a"));
    r = expect(REDIS_REPLY_ARRAY, 0, NULL, "EXEC");
    if (r->elements != 3 || r->element[1]->integer != 42 ||
        strcmp(r->element[2]->str, "42") != 0)
        fail("EXEC: wrong replies");
    freeReplyObject(r);

    /* WATCH, then the key changed by this very connection: EXEC fails. */
    freeReplyObject(expect(REDIS_REPLY_STATUS, 0, "OK", "WATCH hiredis:a"));
    freeReplyObject(expect(REDIS_REPLY_INTEGER, 43, NULL, "INCR hiredis:a"));
    freeReplyObject(expect(REDIS_REPLY_STATUS, 0, "OK", "MULTI"));
    freeReplyObject(expect(REDIS_REPLY_STATUS, 0, "QUEUED", "SET hiredis:a 0"));
    freeReplyObject(expect(REDIS_REPLY_NIL, 0, NULL, "EXEC"));
    freeReplyObject(expect(REDIS_REPLY_STRING, 0, "43", "GET hiredis:a"));

    /* A TTL in milliseconds. */
    freeReplyObject(
        expect(REDIS_REPLY_STATUS, 0, "OK", "SET hiredis:ttl v PX 200"));
    sleep_ms(100);
    freeReplyObject(expect(REDIS_REPLY_STRING, 0, "v", "GET hiredis:ttl"));
    sleep_ms(150);
    freeReplyObject(expect(REDIS_REPLY_NIL, 0, NULL, "GET hiredis:ttl"));

    /* SCAN to the end finds the keys written. */
    int found = 0;
    char cursor[32] = "0";
    do {
        r = expect(REDIS_REPLY_ARRAY, 0, NULL,
                   "SCAN %s MATCH hiredis:* COUNT 100", cursor);
        snprintf(cursor, sizeof cursor, "%s", r->element[0]->str);
        found += (int)r->element[1]->elements;
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    if (found != 2)
        fail("SCAN found %d hiredis:* keys, wanted 2", found);

    /* RESP3 is refused in a way clients fall back from. */
    r = expect(REDIS_REPLY_ERROR, 0, NULL, "HELLO 3");
    if (strncmp(r->str, "NOPROTO", 7) != 0)
        fail("HELLO 3: %s", r->str);
    freeReplyObject(r);
    redisFree(ctx);
    printf("compat_hiredis: every check held\n");
    return 0;
}
