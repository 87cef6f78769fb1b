"""The pass contract: what every rewrite pass declares and reports.

A pass declares one frozen `PassSpec` (its name, its exactness level and the tolerance that level allows)
and returns a `PassReport` with one `Site` per match it looked at: applied (which nodes became which) or
declined (and why). A declined site is not an error.
"""

from __future__ import annotations

import abc
import enum
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: importing onnx_ir costs 0.4 s (sympy), see `optkit --help`
    import onnx_ir as ir


class Exactness(str, enum.Enum):
    """How far a pass may move the outputs of the graph it rewrites."""

    BITWISE = "bitwise"  # pure rewiring: outputs are bit-for-bit equal, NaN and inf included
    # Equal in real arithmetic; float rounding differs, and so may an overflow: where an intermediate
    # of the original overflows (to inf as Exp(100) in Log(Exp(x) + 1), or to NaN by inf - inf) the
    # rewrite may give the finite true value. A NaN input's NaN stays, and a finite output of the
    # original never becomes inf or NaN, except at the edge of the dtype's range (beyond 1/8 of its
    # largest value), where rounding in another order decides between the largest value and inf.
    REASSOCIATE = "reassociate"
    APPROXIMATE = "approximate"  # a bounded approximation, bound stated by the pass
    LOSSY = "lossy"  # deliberately changes the function; never applied silently


@dataclass(frozen=True)
class Tolerance:
    """Output agreement allowed after a pass: ``|a - b| <= atol + rtol * scale`` for every element,
    where `scale` is the largest reference magnitude in the element's channel (axis 1) for outputs of
    rank 2 and more, and the element's own magnitude for rank 0 and 1, never below 10% of the
    output's largest magnitude (`optkit.check.compare.tolerance_scale`).

    Scaling by the channel rather than element-wise keeps a channel whose values cross zero from
    failing a correct rewrite; scaling by the channel rather than the whole output makes a wrong
    small channel next to large ones fail.
    """

    rtol: float
    atol: float


# Tolerances for rewrites that reassociate float arithmetic, per element type of the output.
# A fold changes rounding only where the folded constants are rounded to the weight dtype, so the
# bound is a small multiple of that dtype's epsilon, grown for depth (errors accumulate layer by layer).
REASSOCIATE_TOLERANCE: dict[str, Tolerance] = {
    "float64": Tolerance(rtol=1e-9, atol=1e-12),
    "float32": Tolerance(rtol=1e-4, atol=1e-6),
    "float16": Tolerance(rtol=1e-2, atol=1e-4),
    "bfloat16": Tolerance(rtol=6e-2, atol=1e-3),
}
EXACT = Tolerance(rtol=0.0, atol=0.0)


def tolerance_for(exactness: Exactness, dtype_name: str) -> Tolerance:
    """The tolerance an output of element type `dtype_name` gets after a pass of `exactness`.

    Non-float outputs (integers, bool, strings) are always compared exactly.
    """
    if exactness is Exactness.BITWISE or dtype_name not in REASSOCIATE_TOLERANCE:
        return EXACT
    return REASSOCIATE_TOLERANCE[dtype_name]


@dataclass(frozen=True)
class PassSpec:
    """What a pass guarantees. `summary` is one line for `optkit passes` and reports."""

    name: str
    exactness: Exactness
    summary: str
    default: bool = True  # part of the default `fuse` pipeline


@dataclass(frozen=True)
class Decline:
    """The one "not here, because `reason`" value a rule, a check, a verification step or a command
    returns instead of its result when it does nothing.

    A rule returns `Plan | Decline`, a check `Decline | None` (None: nothing stands in the way), and
    callers test `isinstance(x, Decline)` or `is None`; a Decline is a value, never an exception,
    and never an empty string that means "fine". `reason` is in words a user can act on; a site
    declined for it carries the same text (`Site.reason`).
    """

    reason: str

    def __post_init__(self) -> None:
        if not self.reason:
            raise ValueError("a Decline needs a reason")

    def __str__(self) -> str:
        return self.reason

    def prefixed(self, context: str) -> Decline:
        """The same decline with `context` before its reason ("conv+bn: " + reason)."""
        return Decline(f"{context}{self.reason}")


@dataclass(frozen=True)
class Site:
    """One match a rule looked at.

    `applied` sites name the nodes replaced and the nodes that replaced them; declined sites carry
    the `reason` in words a user can act on.
    """

    rule: str
    node: str
    applied: bool
    reason: str = ""
    removed: tuple[str, ...] = ()
    added: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "node": self.node,
            "applied": self.applied,
            "reason": self.reason,
            "removed": list(self.removed),
            "added": list(self.added),
        }


@dataclass
class PassReport:
    """What one run of one pass did."""

    name: str
    exactness: Exactness
    sites: list[Site] = field(default_factory=list)
    seconds: float = 0.0
    iterations: int = 1
    rolled_back: bool = False
    rollback_reason: str = ""

    @property
    def modified(self) -> bool:
        return any(site.applied for site in self.sites) and not self.rolled_back

    @property
    def applied(self) -> list[Site]:
        return [s for s in self.sites if s.applied]

    @property
    def declined(self) -> list[Site]:
        return [s for s in self.sites if not s.applied]

    def hits(self) -> Counter[str]:
        """Applied sites per rule."""
        return Counter(site.rule for site in self.applied)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "exactness": self.exactness.value,
            "seconds": round(self.seconds, 6),
            "iterations": self.iterations,
            "hits": dict(self.hits()),
            "rolled_back": self.rolled_back,
            "rollback_reason": self.rollback_reason,
            "sites": [s.to_dict() for s in self.sites],
        }


@dataclass(frozen=True)
class PassOptions:
    """User choices that change what passes may do. Defaults are the safe ones."""

    freeze_initializer_inputs: bool = False  # fold initializers that are also graph inputs
    bn_to_affine: bool = False  # rewrite BatchNorm no layer can absorb into Mul + Add
    constant_fold_max_elements: int = 1 << 24  # largest tensor constant folding may create (16M)
    all_canonical: bool = False  # also fuse forms into ops ONNX Runtime runs slower than the chain


class RewritePass(abc.ABC):
    """A rewrite pass: matches sites, checks them without mutating, rewrites through `optkit.core.graph`.

    `run` mutates `model` in place and returns one `Site` per match it looked at. It must leave a
    valid graph and be idempotent: a second run on its own output applies nothing.
    """

    spec: PassSpec

    @abc.abstractmethod
    def run(self, model: ir.Model, options: PassOptions) -> list[Site]: ...
