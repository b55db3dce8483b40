/* Real symbols for the static-inline DPDK functions Carmine calls, and a few wrappers that hide
 * structures whose layout changes between DPDK releases (rte_eth_conf, rte_ether_addr). */
#ifndef CARMINE_DPDK_SHIM_H
#define CARMINE_DPDK_SHIM_H

#include <stdint.h>

struct rte_mbuf;
struct rte_mempool;

/* Port statistics in a layout of our own (stable across DPDK versions). */
struct carmine_eth_stats {
	uint64_t ipackets;
	uint64_t opackets;
	uint64_t ibytes;
	uint64_t obytes;
	uint64_t imissed;
	uint64_t ierrors;
	uint64_t oerrors;
	uint64_t rx_nombuf;
};

int carmine_rte_errno(void);
const char *carmine_rte_version(void);

uint16_t carmine_eth_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t carmine_eth_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);

struct rte_mbuf *carmine_pktmbuf_alloc(struct rte_mempool *mp);
void carmine_pktmbuf_free(struct rte_mbuf *m);
void *carmine_pktmbuf_mtod(struct rte_mbuf *m);
uint16_t carmine_pktmbuf_data_len(const struct rte_mbuf *m);
uint32_t carmine_pktmbuf_pkt_len(const struct rte_mbuf *m);
uint16_t carmine_pktmbuf_nb_segs(const struct rte_mbuf *m);
uint16_t carmine_pktmbuf_tailroom(const struct rte_mbuf *m);
/* Appends len bytes to the (single-segment) mbuf; returns the start of the new bytes or NULL. */
char *carmine_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
/* Trims len bytes from the end; returns 0 or -1. */
int carmine_pktmbuf_trim(struct rte_mbuf *m, uint16_t len);
/* Checks an mbuf's header for consistency; returns 0 or -1 with *reason set. */
int carmine_pktmbuf_check(const struct rte_mbuf *m, const char **reason);

unsigned int carmine_mempool_avail_count(const struct rte_mempool *mp);
unsigned int carmine_mempool_in_use_count(const struct rte_mempool *mp);

/* Configures port `port` with nb_rxq RX and nb_txq TX queues of nb_desc descriptors each; RX queue
 * i takes its mbufs from pools[i]. With want_rss, RSS over IPv4/TCP is requested when the PMD
 * offers it; *rss_on tells whether it is on. Starts the port. Returns 0 or a negative errno. */
int carmine_eth_port_setup(uint16_t port, uint16_t nb_rxq, uint16_t nb_txq, uint16_t nb_desc,
			   struct rte_mempool **pools, int want_rss, int *rss_on);
/* Copies the port's MAC address into mac[6]. Returns 0 or a negative errno. */
int carmine_eth_macaddr(uint16_t port, uint8_t mac[6]);
/* 1 if the link is up, 0 if down, negative errno on error. */
int carmine_eth_link_up(uint16_t port);
int carmine_eth_stats(uint16_t port, struct carmine_eth_stats *out);
/* The AF_PACKET socket behind RX queue `queue` of an af_packet port (readable when a frame is
 * in its ring), from sys/patches/0002-af-packet-rx-fd.patch. -ENOTSUP for another PMD, or when
 * the DPDK linked in lacks the patch (an installed DPDK_DIR). */
int carmine_af_packet_rx_fd(uint16_t port, uint16_t queue);

#endif

/* Gives the calling thread, which must not be an EAL thread, the lcore id `lcore_id` (not one
 * of the EAL's enabled lcores): mempool operations on it then use that lcore's cache. -EINVAL,
 * -EBUSY (an EAL lcore) or -EALREADY (the thread has an lcore id). */
int carmine_thread_set_lcore(unsigned int lcore_id);
/* RTE_MAX_LCORE of this build. */
unsigned int carmine_max_lcore(void);
/* rte_lcore_id() of the calling thread (LCORE_ID_ANY, above RTE_MAX_LCORE, if it has none). */
unsigned int carmine_current_lcore(void);
