"""wgsef: native PyTorch ops for training structured-sparse networks.

``torch.ops.wgsef.*`` are C++ kernels registered as torch custom ops; this
package adds typed wrappers with group specs (:mod:`wgsef.functional`).
"""

import torch  # noqa: F401  (load libtorch before the extension)

from . import _C, nm, ops
from .compaction import Residual, compact
from .coupled import CoupledTerms, coupled_param_groups, coupled_terms
from .functional import group_norms, prox, prox_, value
from .groups import GroupSpec, num_groups
from .nm import NMSchedule, NMSparsifier, check_nm, nm_decay, nm_mask
from .optim import ProxOptimizer, ProxSGD, rebind_param_groups, regularized_param_groups
from .report import SparsityReport, sparsity_report

__version__ = "0.1.0"

__all__ = [
    "CoupledTerms",
    "GroupSpec",
    "NMSchedule",
    "NMSparsifier",
    "ProxOptimizer",
    "ProxSGD",
    "Residual",
    "SparsityReport",
    "check_nm",
    "compact",
    "coupled_param_groups",
    "coupled_terms",
    "group_norms",
    "nm",
    "nm_decay",
    "nm_mask",
    "num_groups",
    "ops",
    "prox",
    "prox_",
    "rebind_param_groups",
    "regularized_param_groups",
    "sparsity_report",
    "value",
]

with_cuda: bool = _C.with_cuda
