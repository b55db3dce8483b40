#include <errno.h>
#include <string.h>
#include <rte_config.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_version.h>
#include "shim.h"

int carmine_rte_errno(void) { return rte_errno; }
const char *carmine_rte_version(void) { return rte_version(); }

uint16_t carmine_eth_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
	return rte_eth_rx_burst(port, queue, pkts, n);
}

uint16_t carmine_eth_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
	return rte_eth_tx_burst(port, queue, pkts, n);
}

struct rte_mbuf *carmine_pktmbuf_alloc(struct rte_mempool *mp) { return rte_pktmbuf_alloc(mp); }
void carmine_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }
void *carmine_pktmbuf_mtod(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, void *); }
uint16_t carmine_pktmbuf_data_len(const struct rte_mbuf *m) { return rte_pktmbuf_data_len(m); }
uint32_t carmine_pktmbuf_pkt_len(const struct rte_mbuf *m) { return rte_pktmbuf_pkt_len(m); }
uint16_t carmine_pktmbuf_nb_segs(const struct rte_mbuf *m) { return m->nb_segs; }
uint16_t carmine_pktmbuf_tailroom(const struct rte_mbuf *m) { return rte_pktmbuf_tailroom(m); }
char *carmine_pktmbuf_append(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_append(m, len); }
int carmine_pktmbuf_trim(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_trim(m, len); }

int carmine_pktmbuf_check(const struct rte_mbuf *m, const char **reason)
{
	return rte_mbuf_check(m, 1, reason);
}

unsigned int carmine_mempool_avail_count(const struct rte_mempool *mp)
{
	return rte_mempool_avail_count(mp);
}

unsigned int carmine_mempool_in_use_count(const struct rte_mempool *mp)
{
	return rte_mempool_in_use_count(mp);
}

int carmine_eth_port_setup(uint16_t port, uint16_t nb_rxq, uint16_t nb_txq, uint16_t nb_desc,
			   struct rte_mempool **pools, int want_rss, int *rss_on)
{
	struct rte_eth_conf conf;
	struct rte_eth_dev_info info;
	uint16_t rxd = nb_desc, txd = nb_desc;
	int rc;

	memset(&conf, 0, sizeof(conf));
	rc = rte_eth_dev_info_get(port, &info);
	if (rc != 0) {
		return rc;
	}
	*rss_on = 0;
	if (want_rss && nb_rxq > 1 && (info.flow_type_rss_offloads & ETH_RSS_NONFRAG_IPV4_TCP)) {
		conf.rxmode.mq_mode = ETH_MQ_RX_RSS;
		conf.rx_adv_conf.rss_conf.rss_key = NULL; /* the PMD's default key */
		conf.rx_adv_conf.rss_conf.rss_hf =
			info.flow_type_rss_offloads & (ETH_RSS_IPV4 | ETH_RSS_NONFRAG_IPV4_TCP);
		*rss_on = 1;
	}
	rc = rte_eth_dev_configure(port, nb_rxq, nb_txq, &conf);
	if (rc != 0) {
		return rc;
	}
	rc = rte_eth_dev_adjust_nb_rx_tx_desc(port, &rxd, &txd);
	if (rc != 0) {
		return rc;
	}
	for (uint16_t q = 0; q < nb_rxq; q++) {
		rc = rte_eth_rx_queue_setup(port, q, rxd, rte_eth_dev_socket_id(port), NULL, pools[q]);
		if (rc != 0) {
			return rc;
		}
	}
	for (uint16_t q = 0; q < nb_txq; q++) {
		rc = rte_eth_tx_queue_setup(port, q, txd, rte_eth_dev_socket_id(port), NULL);
		if (rc != 0) {
			return rc;
		}
	}
	rc = rte_eth_dev_start(port);
	if (rc != 0) {
		return rc;
	}
	/* Best effort: af_packet and tap deliver only frames for our MAC otherwise. */
	rte_eth_promiscuous_enable(port);
	return 0;
}

int carmine_eth_macaddr(uint16_t port, uint8_t mac[6])
{
	struct rte_ether_addr a;

	if (!rte_eth_dev_is_valid_port(port)) {
		return -ENODEV;
	}
	rte_eth_macaddr_get(port, &a);
	memcpy(mac, a.addr_bytes, 6);
	return 0;
}

int carmine_eth_link_up(uint16_t port)
{
	struct rte_eth_link link;
	int rc = rte_eth_link_get_nowait(port, &link);

	if (rc != 0) {
		return rc;
	}
	return link.link_status == ETH_LINK_UP;
}

int carmine_eth_stats(uint16_t port, struct carmine_eth_stats *out)
{
	struct rte_eth_stats s;
	int rc = rte_eth_stats_get(port, &s);

	if (rc != 0) {
		return rc;
	}
	out->ipackets = s.ipackets;
	out->opackets = s.opackets;
	out->ibytes = s.ibytes;
	out->obytes = s.obytes;
	out->imissed = s.imissed;
	out->ierrors = s.ierrors;
	out->oerrors = s.oerrors;
	out->rx_nombuf = s.rx_nombuf;
	return 0;
}

/* Weak: resolves to NULL when the DPDK linked in does not carry our af_packet patch. */
__attribute__((weak)) int rte_pmd_af_packet_rx_fd(uint16_t port_id, uint16_t queue_id);

int carmine_af_packet_rx_fd(uint16_t port, uint16_t queue)
{
	if (rte_pmd_af_packet_rx_fd == NULL) {
		return -ENOTSUP;
	}
	return rte_pmd_af_packet_rx_fd(port, queue);
}

int carmine_thread_set_lcore(unsigned int lcore_id)
{
	if (lcore_id >= RTE_MAX_LCORE)
		return -EINVAL;
	if (rte_lcore_is_enabled(lcore_id))
		return -EBUSY;
	if (rte_lcore_id() != LCORE_ID_ANY)
		return -EALREADY;
	RTE_PER_LCORE(_lcore_id) = lcore_id;
	return 0;
}

unsigned int carmine_max_lcore(void)
{
	return RTE_MAX_LCORE;
}

unsigned int carmine_current_lcore(void)
{
	return rte_lcore_id();
}
