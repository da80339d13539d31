/* kernels/comm.h over MPI with 3 ranks: TP = 3 is the default model's layout, and an odd size
 * gives the splits a group of one (ranks {0, 1} and {2}). The checks are test_comm_np4.c's; they
 * adapt to the world size. */
#define COMM_TEST_NP 3
#include "test_comm_np4.c"
