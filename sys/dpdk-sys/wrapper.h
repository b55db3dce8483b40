/* The DPDK API surface Carmine uses. Keep it small: everything here must compile against the
 * vendored DPDK 20.05 and against an installed one (DPDK_DIR). */
#include <rte_config.h>
#include <rte_version.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_mempool.h>
#include <rte_mbuf.h>
#include <rte_ethdev.h>
#include <rte_bus_vdev.h>
#include "shim.h"
