/* The SPDK API surface Carmine uses. Keep it small: it must compile against the vendored SPDK
 * 20.07 and, through SPDK_DIR, an installed one. */
#include <spdk/stdinc.h>
#include <spdk/version.h>
#include <spdk/env.h>
#include <spdk/env_dpdk.h>
#include <spdk/log.h>
#include <spdk/thread.h>
#include <spdk/bdev.h>
#include "shim.h"
