/* Expert parallelism of one mixture-of-experts layer (model/shard_plan.h): the routed experts are
 * spread over the ranks of a pipeline stage, whole experts, rank j of ep holding [j * n_expert /
 * ep, (j + 1) * n_expert / ep); tokens reach them by an all-to-all (dispatch) and come back by
 * another (combine).
 *
 * What runs: every rank of the stage holds the same n rows of x (attention replicated over the
 * stage's attention groups, and tp-sliced within one, as the runner does today). Every rank routes
 * all n rows (the router is replicated and tiny), so each knows where every row goes and what it
 * receives: no count exchange. Rank j is the home of rows [j * c, (j + 1) * c) (c = ceil(n / ep)):
 * it sends each of them to the owners of its chosen experts, the owners run each expert once over
 * the rows it got (from every rank, in token order: the same batch as one rank's op), send the
 * results back, and the home adds them with the routing weights in expert order, as tsr_op_moe
 * does. An all-gather over the stage gives every rank all n rows again; the shared expert runs
 * on all n rows, tp-sliced (its partial sums are added over the attention group). With tp = 1 the
 * result is bitwise tsr_op_moe's; with tp > 1 the shared expert's sum order differs by f32
 * rounding, as a dense layer's. No capacity factor: buffers are sized by the routing of each
 * call and no token is dropped. Data-parallel attention (groups serving different sequences)
 * would send counts first; it is not run. */
#ifndef TSR_KERNELS_MOE_EP_H
#define TSR_KERNELS_MOE_EP_H

#include "kernels/backend.h"
#include "kernels/comm.h"

struct tsr_moe_ep {
    tsr_comm_t *ep; /* the stage's ranks; its size divides n_expert */
    tsr_comm_t *tp; /* the attention group (the shared expert's slices), or NULL when tp = 1 */
};

/* tsr_op_moe with moe->gate/up/down[e] held (buf not NULL) for this rank's experts only; the
 * others are never read. The shared expert weights are this rank's tp slice. Collective over
 * ep->ep (and ep->tp): every rank calls it with the same n and the same rows of x. Host-visible
 * buffers only (the CPU backend, MPI): TSR_EUNSUPPORTED otherwise; TSR_EINVAL when the stage's
 * size does not divide the experts or a local expert is missing. */
int tsr_op_moe_ep(tsr_backend_t *b, tsr_buf_t *out, tsr_buf_t *x, const struct tsr_moe *moe, int n,
                  const struct tsr_moe_ep *ep);

#endif
