#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

#include "shim.h"

int cg_errno(void) { return rte_errno; }
void cg_set_errno(int value) { rte_errno = value; }

uint16_t cg_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n) {
	return rte_eth_rx_burst(port, queue, pkts, n);
}

uint16_t cg_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n) {
	return rte_eth_tx_burst(port, queue, pkts, n);
}

struct rte_mbuf *cg_pktmbuf_alloc(struct rte_mempool *pool) { return rte_pktmbuf_alloc(pool); }
void cg_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }

uint8_t *cg_pktmbuf_data(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, uint8_t *); }
uint16_t cg_pktmbuf_data_len(const struct rte_mbuf *m) { return rte_pktmbuf_data_len(m); }
uint32_t cg_pktmbuf_pkt_len(const struct rte_mbuf *m) { return rte_pktmbuf_pkt_len(m); }
uint16_t cg_pktmbuf_nb_segs(const struct rte_mbuf *m) { return m->nb_segs; }
uint16_t cg_pktmbuf_tailroom(const struct rte_mbuf *m) { return rte_pktmbuf_tailroom(m); }
uint8_t *cg_pktmbuf_append(struct rte_mbuf *m, uint16_t len) {
	return (uint8_t *)rte_pktmbuf_append(m, len);
}

int cg_pktmbuf_vlan_stripped(const struct rte_mbuf *m, uint16_t *outer, uint16_t *tci) {
	if (m->ol_flags & RTE_MBUF_F_RX_QINQ_STRIPPED) {
		*outer = m->vlan_tci_outer;
		*tci = m->vlan_tci;
		return 2;
	}
	if (m->ol_flags & RTE_MBUF_F_RX_VLAN_STRIPPED) {
		*tci = m->vlan_tci;
		return 1;
	}
	return 0;
}

unsigned int cg_mempool_avail(const struct rte_mempool *pool) {
	return rte_mempool_avail_count(pool);
}
