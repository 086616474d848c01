/*
 * snapshot.h - saving the store's live data to a file and loading it back.
 */
#ifndef SHMKVD_SNAPSHOT_H
#define SHMKVD_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>

#include "shmkv.h"

/* Writes every live entry of kv, with its absolute expiry time, to path
 * atomically: a temporary file beside it, fsync, rename over path, fsync of
 * the directory. The file ends with a checksum of everything before it.
 * On failure returns -1 with the reason in err, and path is untouched.
 * *entries_out (may be NULL) receives the number of entries written. */
int snapshot_save(struct shmkv *kv, const char *path, uint64_t *entries_out,
                  char *err, size_t err_cap);

/* Loads the snapshot at path into kv. The whole file is read and verified
 * (magic, version, every length, the checksum) before anything is written
 * to the store, so a corrupt or truncated snapshot is refused with a clear
 * error and never half-loaded. Entries that expired since the save are
 * skipped. Returns 0, or -1 with err set. *entries_out (may be NULL)
 * receives the number of entries loaded. */
int snapshot_load(struct shmkv *kv, const char *path, uint64_t *entries_out,
                  char *err, size_t err_cap);

#endif
