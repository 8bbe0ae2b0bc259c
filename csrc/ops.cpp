// Every wgsef op schema, in one place. Kernels register per backend under
// csrc/<backend>/; fake kernels, autograd and Python wrappers live in wgsef/ops.py.
//
// Group layout shared by the ops: with group_ids = None, x is a 3-D view
// (outer, groups, inner) and group g is x[:, g, :]; with group_ids, x has any
// shape and group_ids (int64, same shape) holds each element's group in
// [0, num_groups). weights: None (all 1) or one positive entry per group.
#include <torch/library.h>

TORCH_LIBRARY(wgsef, m) {
  m.set_python_module("wgsef.ops");
  m.def("group_norms(Tensor x, Tensor? group_ids=None, int num_groups=-1) -> Tensor");
  m.def(
      "value(Tensor x, int k, Tensor? weights=None, Tensor? group_ids=None, "
      "int num_groups=-1) -> Tensor");
  m.def(
      "value_backward(Tensor grad, Tensor x, int k, Tensor? weights=None, "
      "Tensor? group_ids=None, int num_groups=-1) -> Tensor");
  m.def(
      "prox(Tensor x, int k, Tensor lam, Tensor? weights=None, Tensor? group_ids=None, "
      "int num_groups=-1) -> Tensor");
  m.def(
      "prox_(Tensor(a!) x, int k, Tensor lam, Tensor? weights=None, "
      "Tensor? group_ids=None, int num_groups=-1) -> ()");
  // In-place prox on a list of tensors, one call per optimizer param group.
  // layout holds (outer, groups, inner) per tensor; with group_ids[i] given,
  // layout[3i+1] is its number of groups and the other two are ignored.
  // weights: [] or one optional entry per tensor. lr is the optimizer's step
  // size, which multiplies every lam. shared=False: tensor i is its own WGSEF
  // term with budget k[i] and strength lr*lam[i] (lam has 1 or n entries).
  // shared=True: one term over all groups of all tensors, budget k[0] and
  // strength lr*lam[0].
  m.def(
      "prox_multi_(Tensor(a!)[] xs, int[] layout, Tensor?[] group_ids, Tensor?[] weights, "
      "int[] k, Tensor lam, Tensor lr, bool shared=False) -> ()");

  // In-place prox with coupled groups: a coupled group is a union of groups of
  // several tensors (a filter, its batch-norm entries, the consumer's input
  // channel), with norm sqrt(sum of its members' squared norms), and one
  // factor scales all its members. xs, layout and group_ids describe each
  // tensor's own groups as in prox_multi_; coupling[i] (int64, one entry per
  // group of xs[i]) gives each of them its coupled group in [0, G). The G
  // coupled groups form len(term_sizes) WGSEF terms of consecutive groups,
  // term t with budget k[t] and strength lr*lam[t] (lam has 1 or len(k)
  // entries); weights: None or one positive entry per coupled group.
  m.def(
      "prox_coupled_(Tensor(a!)[] xs, int[] layout, Tensor?[] group_ids, Tensor[] coupling, "
      "int[] term_sizes, Tensor? weights, int[] k, Tensor lam, Tensor lr) -> ()");

  // prox_multi_ on terms of single-element groups ("elements") whose tensors
  // are spread over processes: xs are this process's shards (groups: their
  // elements), counted[i] says whether xs[i]'s elements count towards its term
  // here (False for a copy that another process counts), k, lam, lr and shared
  // as in prox_multi_, with k the whole term's budget. The threshold search
  // streams the shards and completes its few counts and sums per pass with an
  // all_reduce over each of process_groups (c10d group names; empty: one
  // process); process_index is this process's place among process_count.
  m.def(
      "prox_elements_(Tensor(a!)[] xs, Tensor?[] weights, bool[] counted, int[] k, Tensor lam, "
      "Tensor lr, bool shared, str[] process_groups, int process_index, int process_count) -> ()");

  // One torch.optim.SGD step on every tensor of a param group, fused with the
  // float64 squared group norms of the updated params, which the sharded prox
  // all-reduces before it scales (docs/design.md §8): one pass over params,
  // grads and momentum_buffers (empty when momentum is 0, else one allocated
  // buffer per param). layout holds (outer, groups, inner) per param, as in
  // prox_multi_; returns every param's squares, concatenated in order. A
  // square that overflows comes back as inf.
  m.def(
      "sgd_group_squares_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, "
      "int[] layout, float lr, float weight_decay=0.0, float momentum=0.0, float dampening=0.0, "
      "bool nesterov=False, bool maximize=False) -> Tensor");

  // N:M sparsity. Groups are runs of m consecutive elements along dim; the mask
  // keeps the n largest |w| of each (NaN ranks with +inf, ties to the lower
  // index; docs/design.md §6.2).
  m.def("nm_mask(Tensor w, int n, int m, int dim=-1) -> Tensor");
  // (W * (mask + decay * (1 - mask)), saved_mask) in one pass. grad_mode and
  // srste_weight select the backward: "ste" passes the gradient through,
  // "scaled" multiplies it by (mask + decay * (1 - mask)); srste_weight adds
  // srste_weight * (1 - mask) * W (SR-STE). saved_mask is the mask when the
  // backward needs it ("scaled" or srste_weight > 0), else an empty tensor.
  m.def(
      "nm_decay(Tensor w, int n, int m, int dim, Tensor decay, str grad_mode=\"ste\", "
      "float srste_weight=0.0) -> (Tensor, Tensor)");
}
