/*
 * segment.c - System V keys and segments, and process identity.
 *
 * Keys come as a number ("key:0x5eed0001", "0x5eed0001", "1234"), as
 * ftok(path, proj_id) ("ftok:/path:1"), or from a shmkvd config file's
 * [store] key setting. Kernel errors map to distinct shmkv codes, naming
 * the sysctl when a limit was hit.
 */
#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <unistd.h>

#include "internal.h"

static int parse_number_key(const char *s, key_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno != 0 || end == s || *end != '\0' || v == 0 || v > 0xffffffffull ||
        strchr(s, '-') != NULL)
        return set_error(SHMKV_EINVAL,
                         "bad key '%s': want a nonzero 32-bit "
                         "number such as 0x5eed0001",
                         s);
    *out = (key_t)(uint32_t)v;
    return 0;
}

static int parse_ftok_key(const char *spec, key_t *out)
{
    const char *body = spec + strlen("ftok:");
    const char *colon = strrchr(body, ':');
    if (colon == NULL || colon == body)
        return set_error(SHMKV_EINVAL, "bad key '%s': want ftok:/path:proj_id",
                         spec);
    char path[4096];
    size_t plen = (size_t)(colon - body);
    if (plen >= sizeof path)
        return set_error(SHMKV_EINVAL, "bad key '%s': path too long", spec);
    memcpy(path, body, plen);
    path[plen] = '\0';
    char *end;
    errno = 0;
    long proj = strtol(colon + 1, &end, 0);
    if (errno != 0 || end == colon + 1 || *end != '\0' || proj < 1 ||
        proj > 255)
        return set_error(SHMKV_EINVAL, "bad key '%s': proj_id must be 1 to 255",
                         spec);
    key_t k = ftok(path, (int)proj);
    if (k == (key_t)-1)
        return set_errno_error(SHMKV_EINVAL, path);
    *out = k;
    return 0;
}

int shmkv_parse_key(const char *spec, int32_t *key_out)
{
    _Static_assert(sizeof(key_t) == sizeof(int32_t), "key_t is 32 bits");
    key_t *out = (key_t *)key_out;
    if (spec == NULL || key_out == NULL)
        return set_error(SHMKV_EINVAL, "no key given");
    while (isspace((unsigned char)*spec))
        spec++;
    if (strncmp(spec, "ftok:", 5) == 0)
        return parse_ftok_key(spec, out);
    if (strncmp(spec, "key:", 4) == 0)
        spec += 4;
    return parse_number_key(spec, out);
}

static bool looks_like_key_spec(const char *where)
{
    return strncmp(where, "key:", 4) == 0 || strncmp(where, "ftok:", 5) == 0 ||
           isdigit((unsigned char)where[0]);
}

struct config_key {
    const char *path;
    char key[4096];
    int line;
    bool found;
};

static int config_key_handler(void *user, const char *section, const char *name,
                              const char *value)
{
    struct config_key *ck = user;
    if (strcmp(section, "store") == 0 && strcmp(name, "key") == 0) {
        snprintf(ck->key, sizeof ck->key, "%s", value);
        ck->found = true;
    }
    return 1;
}

/* Reads the store key from a shmkvd config file. Only [store] key matters
 * here; the daemon validates the rest. */
static int key_from_config(const char *path, key_t *out)
{
    struct config_key ck = {.path = path};
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return set_errno_error(SHMKV_ECONFIG, path);
    int line = ini_parse_file(f, config_key_handler, &ck);
    fclose(f);
    if (line > 0)
        return set_error(SHMKV_ECONFIG, "%s:%d: not valid INI syntax", path,
                         line);
    if (line < 0)
        return set_error(SHMKV_ECONFIG, "%s: could not be read", path);
    if (!ck.found)
        return set_error(SHMKV_ECONFIG, "%s: no 'key' in section [store]",
                         path);
    int rc = shmkv_parse_key(ck.key, (int32_t *)out);
    if (rc != 0)
        return set_error(SHMKV_ECONFIG, "%s: [store] key: %s", path,
                         shmkv_last_error());
    return 0;
}

int key_from_where(const char *where, key_t *out)
{
    if (where == NULL || where[0] == '\0')
        return set_error(SHMKV_EINVAL, "no store given");
    if (looks_like_key_spec(where))
        return shmkv_parse_key(where, (int32_t *)out);
    return key_from_config(where, out);
}

uint64_t page_bytes(void)
{
    long p = sysconf(_SC_PAGESIZE);
    return p > 0 ? (uint64_t)p : 4096u;
}

uint64_t round_to_pages(uint64_t bytes)
{
    uint64_t p = page_bytes();
    return (bytes + p - 1) / p * p;
}

/* A number of kB from a /proc/meminfo line "name: N kB", 0 if absent. */
static uint64_t meminfo_value(const char *name)
{
    FILE *f = fopen("/proc/meminfo", "re");
    if (f == NULL)
        return 0;
    char line[256];
    size_t n = strlen(name);
    uint64_t v = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, name, n) == 0 && line[n] == ':') {
            v = strtoull(line + n + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

uint64_t huge_page_bytes(void)
{
    return meminfo_value("Hugepagesize") * 1024u;
}

/* Why a huge-page segment could not be made: the pool or the permission,
 * each named by its sysctl. */
static int huge_error(int err, uint64_t bytes)
{
    uint64_t hp = huge_page_bytes();
    uint64_t free_pages = meminfo_value("HugePages_Free");
    uint64_t rsvd = meminfo_value("HugePages_Rsvd");
    uint64_t avail = free_pages > rsvd ? free_pages - rsvd : 0;
    if (err == ENOMEM || err == ENOSPC)
        return set_error(
            SHMKV_ENOMEM,
            "the huge page pool is short: a %llu-byte segment needs %llu "
            "huge pages of %llu kB and %llu are free (HugePages_Free less "
            "HugePages_Rsvd in /proc/meminfo); raise vm.nr_hugepages",
            (unsigned long long)bytes,
            (unsigned long long)(hp ? (bytes + hp - 1) / hp : 0),
            (unsigned long long)(hp / 1024), (unsigned long long)avail);
    if (err == EPERM) {
        char gid[32] = "?";
        FILE *f = fopen("/proc/sys/vm/hugetlb_shm_group", "re");
        if (f != NULL) {
            if (fgets(gid, sizeof gid, f) == NULL)
                strcpy(gid, "?");
            gid[strcspn(gid, "\n")] = '\0';
            fclose(f);
        }
        return set_error(SHMKV_EACCES,
                         "this process may not make huge-page segments: it "
                         "needs CAP_IPC_LOCK, or membership in the group "
                         "vm.hugetlb_shm_group names (now gid %s)",
                         gid);
    }
    if (err == EINVAL && huge_page_bytes() == 0)
        return set_error(SHMKV_EINVAL,
                         "this kernel has no huge pages (no Hugepagesize in "
                         "/proc/meminfo)");
    errno = err;
    return set_errno_error(SHMKV_ESYS, "shmget(SHM_HUGETLB)");
}

int segment_create(key_t key, uint64_t bytes, unsigned mode, bool huge,
                   int *shmid_out)
{
    int flags = IPC_CREAT | IPC_EXCL | (int)(mode & 0777);
    if (huge)
        flags |= SHM_HUGETLB;
    int id = shmget(key, (size_t)bytes, flags);
    if (id >= 0) {
        *shmid_out = id;
        return 0;
    }
    if (huge && errno != EEXIST)
        return huge_error(errno, bytes);
    switch (errno) {
    case EEXIST:
        return set_error(SHMKV_EEXIST, "a segment already exists at key 0x%08x",
                         (unsigned)key);
    case EINVAL:
        return set_error(SHMKV_ELIMIT,
                         "a segment of %llu bytes is over kernel.shmmax "
                         "(see /proc/sys/kernel/shmmax)",
                         (unsigned long long)bytes);
    case ENOSPC:
        return set_error(SHMKV_ELIMIT,
                         "a segment of %llu bytes is over kernel.shmall "
                         "(total pages) or kernel.shmmni (segment count); "
                         "see /proc/sys/kernel/shmall and shmmni",
                         (unsigned long long)bytes);
    case ENOMEM:
        return set_error(SHMKV_ENOMEM, "no memory for a %llu-byte segment",
                         (unsigned long long)bytes);
    case EACCES:
        return set_errno_error(SHMKV_EACCES, "shmget");
    default:
        return set_errno_error(SHMKV_ESYS, "shmget");
    }
}

int segment_attach(int shmid, bool rdonly, void **addr_out, uint64_t *bytes_out)
{
    struct shmid_ds ds;
    if (shmctl(shmid, IPC_STAT, &ds) != 0) {
        if (errno == EACCES)
            return set_errno_error(SHMKV_EACCES, "shmctl(IPC_STAT)");
        if (errno == EINVAL || errno == EIDRM)
            return set_error(SHMKV_ENOSTORE, "segment %d is gone", shmid);
        return set_errno_error(SHMKV_ESYS, "shmctl(IPC_STAT)");
    }
    void *addr = shmat(shmid, NULL, rdonly ? SHM_RDONLY : 0);
    if (addr == (void *)-1) {
        if (errno == EACCES)
            return set_errno_error(SHMKV_EACCES, "shmat");
        if (errno == EINVAL || errno == EIDRM)
            return set_error(SHMKV_ENOSTORE, "segment %d is gone", shmid);
        if (errno == ENOMEM)
            return set_errno_error(SHMKV_ENOMEM, "shmat");
        return set_errno_error(SHMKV_ESYS, "shmat");
    }
    *addr_out = addr;
    *bytes_out = ds.shm_segsz;
    return 0;
}
