"""What an IMP run does: how much to prune per round, where to rewind, seeds."""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Rewind:
    """Where the weights go back to after each pruning step.

    - ``init``: the weights before any training (random init, the original LTH);
    - ``pretrained``: the same point, named for runs that start from pre-trained
      weights (the supervised / self-supervised pre-training study);
    - ``iter:K``: the weights after K iterations of the dense round (late
      resetting); pruned rounds then train iterations K..iters-1, so the learning
      rate schedule continues from K;
    - ``none``: no rewinding: each round fine-tunes the weights the last one ended with.
    """

    kind: str = "init"
    iteration: int = 0

    KINDS = ("init", "pretrained", "iter", "none")

    @classmethod
    def parse(cls, text: "str | Rewind") -> "Rewind":
        if isinstance(text, Rewind):
            return text
        if not isinstance(text, str):
            raise TypeError(f"rewind must be a string like 'init' or 'iter:100', got {text!r}")
        t = text.strip().lower()
        if t in ("init", "pretrained", "none"):
            return cls(t, 0)
        if t.startswith("iter:"):
            try:
                k = int(t[5:])
            except ValueError:
                k = -1
            if k < 0:
                raise ValueError(f"rewind {text!r}: K in 'iter:K' must be an integer >= 0")
            return cls("iter", k)
        raise ValueError(f"unknown rewind {text!r}: use 'init', 'pretrained', 'iter:K' "
                         "(late resetting to training iteration K) or 'none'")

    def __str__(self) -> str:
        return f"iter:{self.iteration}" if self.kind == "iter" else self.kind


@dataclass
class IMPConfig:
    """The pruning schedule of an IMP run.

    Round 0 trains the dense model. Each of the ``rounds`` later rounds prunes
    ``rate`` of the weights still unpruned (global magnitude, or per layer with
    ``layerwise``), rewinds and trains again. ``target`` instead sets the sparsity
    of the prunable set reached after the last round (the ``sparsity`` column): from a
    dense start the per-round rate is then ``1 - (1 - target) ** (1 / rounds)``
    (``rounds=1`` is one-shot pruning); from a starting ticket (transfer) the kept
    fraction goes geometrically from the ticket's to ``1 - target``. With global pruning
    the engine turns that into counts, so that the last round ends at exactly
    ``round(target * n)`` pruned of the ``n`` prunable weights (per-round rounding does
    not add up); layer-wise, each tensor gets the per-round rate.
    """

    rounds: int = 3
    rate: float = 0.2
    target: float | None = None
    layerwise: bool = False
    rewind: str = "init"
    seed: int = 0
    extra: dict = field(default_factory=dict)  # free-form, saved with the run

    def __post_init__(self):
        # numbers.Integral / Real: numpy scalars too (kept as int / float); other types are a
        # TypeError, out-of-range values a ValueError (as torch.optim's arguments)
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, numbers.Integral):
            raise TypeError(f"rounds must be an integer >= 0, got {type(self.rounds).__name__} "
                            f"{self.rounds!r}")
        if self.rounds < 0:
            raise ValueError(f"rounds must be an integer >= 0, got {self.rounds!r}")
        self.rounds = int(self.rounds)
        for name in ("rate", "target"):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise TypeError(f"{name} must be a fraction in [0, 1), got {type(v).__name__} {v!r}")
            if not math.isfinite(v) or not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be a fraction in [0, 1), got {v!r}")
            setattr(self, name, float(v))
        if self.target is not None and self.rounds == 0:
            raise ValueError("target sparsity needs rounds >= 1")
        if self.rate is None and self.target is None and self.rounds > 0:
            raise ValueError("rate=None needs a target (the rate per round follows from it); "
                             "give rate= or target=")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) \
                or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be an integer in [0, 2**32), got {self.seed!r}")
        self.seed = int(self.seed)  # (a numpy int: random.seed refuses it)
        if not isinstance(self.layerwise, bool):  # (checked now, not after round 0's training)
            raise TypeError(f"layerwise must be True or False, got {self.layerwise!r}")
        Rewind.parse(self.rewind)
        self.rewind = str(Rewind.parse(self.rewind))

    @property
    def rewind_point(self) -> Rewind:
        return Rewind.parse(self.rewind)

    def per_round_rate(self) -> float:
        if self.target is None:
            return float(self.rate)
        return 1.0 - (1.0 - float(self.target)) ** (1.0 / self.rounds)

    def expected_sparsity(self, round_index: int) -> float:
        """Sparsity after `round_index` rounds (up to rounding of counts)."""
        return 1.0 - (1.0 - self.per_round_rate()) ** round_index

    def to_dict(self) -> dict:
        return asdict(self)
