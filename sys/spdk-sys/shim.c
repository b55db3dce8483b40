#include <errno.h>
#include <string.h>

#include <spdk/stdinc.h>
#include <spdk/bdev.h>
#include <spdk/version.h>
#include <spdk_internal/event.h>

#include "bdev_malloc.h"
#include "bdev_null.h"
#include "bdev_aio.h"
#include "bdev_virtio.h"

#include "shim.h"

void carmine_subsystem_init(carmine_init_cb cb, void *arg)
{
	spdk_subsystem_init(cb, arg);
}

void carmine_subsystem_fini(carmine_done_cb cb, void *arg)
{
	spdk_subsystem_fini(cb, arg);
}

int carmine_bdev_malloc_create(const char *name, uint64_t num_blocks, uint32_t block_size)
{
	struct spdk_bdev *bdev = NULL;

	return create_malloc_disk(&bdev, name, NULL, num_blocks, block_size);
}

int carmine_bdev_null_create(const char *name, uint64_t num_blocks, uint32_t block_size)
{
	struct spdk_null_bdev_opts opts;
	struct spdk_bdev *bdev = NULL;

	memset(&opts, 0, sizeof(opts));
	opts.name = name;
	opts.num_blocks = num_blocks;
	opts.block_size = block_size;
	return bdev_null_create(&bdev, &opts);
}

int carmine_bdev_aio_create(const char *name, const char *filename, uint32_t block_size)
{
	return create_aio_bdev(name, filename, block_size);
}

int carmine_bdev_virtio_blk_create(const char *name, const char *socket_path,
				   unsigned num_queues, unsigned queue_size)
{
	return bdev_virtio_user_blk_dev_create(name, socket_path, num_queues, queue_size) ? 0 : -ENODEV;
}

const char *carmine_null_bdev_product_name(void)
{
	return "Null disk";
}

const char *carmine_spdk_version(void)
{
	return SPDK_VERSION_STRING;
}
