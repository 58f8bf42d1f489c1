/* C wrappers for what DPDK defines as static inline functions, macros or
 * thread-local variables, which bindings cannot call directly. */
#ifndef CHAINGATE_DPDK_SHIM_H
#define CHAINGATE_DPDK_SHIM_H

#include <stdint.h>

struct rte_mbuf;
struct rte_mempool;

/* rte_errno of the calling thread. */
int cg_errno(void);
void cg_set_errno(int value);

uint16_t cg_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t cg_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);

struct rte_mbuf *cg_pktmbuf_alloc(struct rte_mempool *pool);
void cg_pktmbuf_free(struct rte_mbuf *m);

/* The first segment's data, its length, and the packet's whole length. */
uint8_t *cg_pktmbuf_data(struct rte_mbuf *m);
uint16_t cg_pktmbuf_data_len(const struct rte_mbuf *m);
uint32_t cg_pktmbuf_pkt_len(const struct rte_mbuf *m);
uint16_t cg_pktmbuf_nb_segs(const struct rte_mbuf *m);
/* Room at the end of the first segment's buffer. */
uint16_t cg_pktmbuf_tailroom(const struct rte_mbuf *m);
/* Grows the data by len bytes at the end; NULL without room. */
uint8_t *cg_pktmbuf_append(struct rte_mbuf *m, uint16_t len);

/* The VLAN tags a driver stripped into the mbuf: 0 none; 1 one tag (its
 * TCI in *tci); 2 both tags of a QinQ frame (RTE_MBUF_F_RX_QINQ_STRIPPED:
 * the outer TCI in *outer, the inner in *tci). */
int cg_pktmbuf_vlan_stripped(const struct rte_mbuf *m, uint16_t *outer, uint16_t *tci);

/* The number of a mempool's free objects. */
unsigned int cg_mempool_avail(const struct rte_mempool *pool);

#endif
