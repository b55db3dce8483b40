/* Wrappers over SPDK calls whose headers are internal (subsystem init, bdev module creation
 * functions): their signatures move between SPDK releases, so they are pinned here in one place,
 * with plain C types, and nothing above this file sees them. */
#ifndef CARMINE_SPDK_SHIM_H
#define CARMINE_SPDK_SHIM_H

#include <stdint.h>

typedef void (*carmine_init_cb)(int rc, void *arg);
typedef void (*carmine_done_cb)(void *arg);

/* Initializes every linked SPDK subsystem (accel, bdev, ...) on the current SPDK thread;
 * cb fires from spdk_thread_poll. */
void carmine_subsystem_init(carmine_init_cb cb, void *arg);
void carmine_subsystem_fini(carmine_done_cb cb, void *arg);

/* Bdev creation. Each returns 0 or a negative errno. */
int carmine_bdev_malloc_create(const char *name, uint64_t num_blocks, uint32_t block_size);
int carmine_bdev_null_create(const char *name, uint64_t num_blocks, uint32_t block_size);
int carmine_bdev_aio_create(const char *name, const char *filename, uint32_t block_size);
int carmine_bdev_virtio_blk_create(const char *name, const char *socket_path,
				   unsigned num_queues, unsigned queue_size);

/* The product name the null bdev module reports. A null bdev keeps no data; the store refuses it
 * for durable use by this name. */
const char *carmine_null_bdev_product_name(void);

/* SPDK_VERSION_STRING (a macro bindgen cannot evaluate). */
const char *carmine_spdk_version(void);

#endif
