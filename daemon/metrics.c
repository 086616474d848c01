/*
 * metrics.c - the store and the daemon in Prometheus's text exposition
 * format, over HTTP ([metrics] listen = ADDRESS:PORT; off without it).
 *
 * libevent's evhttp serves GET /metrics on the daemon's event loop. A
 * scrape reads the store's statistics (shmkv_stats: a read section, no
 * lock) and the daemon's counters, so it costs microseconds and waits on
 * nothing. It shows counts, never keys or values; still, bind it to
 * loopback or a private address: it has no authentication. Metric names
 * follow Prometheus's conventions: a shmkv_ prefix, base units (bytes,
 * seconds), _total on counters.
 */
#include <errno.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "daemon.h"
#include "log.h"

/* A request's headers and body are small; a scraper that trickles is cut
 * off. */
#define METRICS_TIMEOUT_S 10
#define METRICS_MAX_BODY 4096

static void metric(struct evbuffer *b, const char *name, const char *type,
                   const char *help, double value)
{
    evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help,
                        name, type, name, value);
}

static void gauge(struct evbuffer *b, const char *name, const char *help,
                  uint64_t v)
{
    metric(b, name, "gauge", help, (double)v);
}

static void counter(struct evbuffer *b, const char *name, const char *help,
                    uint64_t v)
{
    metric(b, name, "counter", help, (double)v);
}

/* The whole exposition, into b. */
static int metrics_render(struct daemon *d, struct evbuffer *b)
{
    struct shmkv_stats st;
    int rc = shmkv_stats(d->kv, &st);
    if (rc != 0)
        return rc;
    gauge(b, "shmkv_up", "1 while shmkvd serves its store.", 1);
    gauge(b, "shmkv_store_entries", "Keys in the store.", st.entries);
    gauge(b, "shmkv_store_entries_with_ttl", "Keys with an expiry.",
          st.entries_with_ttl);
    gauge(b, "shmkv_store_index_slots", "Slots of the hash index.",
          st.index_slots);
    gauge(b, "shmkv_memory_used_bytes",
          "Arena bytes held by entries, with their headers.", st.bytes_used);
    gauge(b, "shmkv_memory_free_bytes", "Arena bytes free.", st.bytes_free);
    gauge(b, "shmkv_memory_limbo_bytes",
          "Arena bytes of replaced entries that read sections may still see.",
          st.bytes_limbo);
    gauge(b, "shmkv_memory_capacity_bytes", "The arena's size.",
          st.bytes_capacity);
    gauge(b, "shmkv_memory_largest_free_bytes",
          "The largest entry that could be stored now.", st.largest_free);
    metric(b, "shmkv_memory_fragmentation_ratio", "gauge",
           "1 - largest free block / free bytes.", st.fragmentation);
    gauge(b, "shmkv_segment_bytes", "Bytes of all the store's segments.",
          st.segment_bytes);
    gauge(b, "shmkv_data_segment_bytes", "The data segment's size.",
          st.data_bytes);
    counter(b, "shmkv_hits_total", "Lookups that found their key.", st.hits);
    counter(b, "shmkv_misses_total", "Lookups that did not.", st.misses);
    counter(b, "shmkv_sets_total", "Entries written.", st.sets);
    counter(b, "shmkv_deletes_total", "Entries deleted.", st.deletes);
    counter(b, "shmkv_evictions_total",
            "Live entries evicted to make room (lru stores).", st.evictions);
    counter(b, "shmkv_expirations_total", "Expired entries removed.",
            st.expirations);
    counter(b, "shmkv_lock_waits_total",
            "Writes that slept waiting for the write lock.", st.lock_waits);
    counter(b, "shmkv_lock_timeouts_total",
            "Writes that gave up waiting for the write lock.",
            st.lock_timeouts);
    counter(b, "shmkv_recoveries_total",
            "Write locks replaced after their holder died.", st.recoveries);
    counter(b, "shmkv_sections_revoked_total",
            "Read sections revoked for holding memory too long.",
            st.revocations);
    counter(b, "shmkv_dead_readers_total",
            "Read sections dropped because their process died.",
            st.dead_readers);
    counter(b, "shmkv_compactions_total", "Arena windows packed.",
            st.compactions);
    counter(b, "shmkv_compacted_bytes_total", "Entry bytes moved packing.",
            st.compacted_bytes);
    counter(b, "shmkv_resizes_total", "Online resizes completed.", st.resizes);
    gauge(b, "shmkv_attached_handles", "Library handles attached now.",
          st.clients);
    gauge(b, "shmkv_attached_writers", "Writing handles attached now.",
          st.writers);
    gauge(b, "shmkv_connections_open", "Control socket connections open.",
          d->n_conns);
    counter(b, "shmkv_connections_total", "Control socket connections made.",
            d->connections_total);
    counter(b, "shmkv_connections_rejected_total",
            "Connections refused at max_connections.", d->connections_rejected);
    counter(b, "shmkv_commands_parked_total",
            "Writes that waited for the store off the event loop.",
            d->commands_parked);
    metric(b, "shmkv_uptime_seconds", "gauge", "Seconds since shmkvd started.",
           (double)(time(NULL) - d->started));
    mirror_metrics(d, b);
    commands_prometheus(b);
    return 0;
}

static void metrics_cb(struct evhttp_request *req, void *arg)
{
    struct daemon *d = arg;
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET &&
        evhttp_request_get_command(req) != EVHTTP_REQ_HEAD) {
        evhttp_send_error(req, 405, "only GET");
        return;
    }
    struct evbuffer *b = evbuffer_new();
    if (b == NULL) {
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    int rc = metrics_render(d, b);
    if (rc != 0) {
        evbuffer_free(b);
        evhttp_send_error(req, 503, "the store's statistics are unreadable");
        return;
    }
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; version=0.0.4; charset=utf-8");
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}

static void other_cb(struct evhttp_request *req, void *arg)
{
    (void)arg;
    evhttp_send_error(req, 404, "see /metrics");
}

int metrics_start(struct daemon *d)
{
    if (d->cfg.metrics_listen[0] == '\0')
        return 0;
    char host[64];
    uint16_t port;
    if (config_parse_listen(d->cfg.metrics_listen, host, sizeof host, &port) !=
        0) {
        log_error("[metrics] listen: '%s' is not ADDRESS:PORT",
                  d->cfg.metrics_listen);
        return -1;
    }
    d->http = evhttp_new(d->base);
    if (d->http == NULL) {
        log_error("metrics: cannot make the HTTP server");
        return -1;
    }
    evhttp_set_timeout(d->http, METRICS_TIMEOUT_S);
    evhttp_set_max_body_size(d->http, METRICS_MAX_BODY);
    evhttp_set_max_headers_size(d->http, METRICS_MAX_BODY);
    evhttp_set_allowed_methods(d->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
                                            EVHTTP_REQ_DELETE);
    evhttp_set_cb(d->http, "/metrics", metrics_cb, d);
    evhttp_set_gencb(d->http, other_cb, d);
    if (evhttp_bind_socket_with_handle(d->http, host, port) == NULL) {
        log_error("metrics: cannot listen on %s: %s", d->cfg.metrics_listen,
                  strerror(errno));
        evhttp_free(d->http);
        d->http = NULL;
        return -1;
    }
    log_info("metrics: http://%s/metrics", d->cfg.metrics_listen);
    return 0;
}

void metrics_stop(struct daemon *d)
{
    if (d->http != NULL) {
        evhttp_free(d->http);
        d->http = NULL;
    }
}
