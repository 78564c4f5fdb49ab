"""Count a model from its spec alone: parameters, FLOPs and the shape check, no modules, no weights.

Building the ~250 modules of the final model costs ~35 ms even on the meta device (each runs its
weight init); summing the ops' own arithmetic (models/ops.py) costs well under a millisecond. Both
read the same ops, and tests compare this count with the built model's p.numel() and FlopCounterMode.
"""
from dataclasses import dataclass, field

from models import ops
from models.resnet import head_ops, layout, stem_ops
from models.specs import ModelSpec

TRAIN_FLOPS_PER_FORWARD = 3  # training step = forward + backward (~2 x forward: grads of inputs and weights)


@dataclass
class ParamReport:
    rows: list  # (name, params): stem, each layer, head
    total: int
    budget: int
    note: str = ""  # model.budget_note: why a preset is over budget on purpose, appended to the error
    flops: list = field(default_factory=list)  # forward FLOPs per image of each row, aligned with rows
    max_gflops: float | None = None  # budget.max_gflops: training GFLOP per image; None = no FLOPs budget

    @property
    def forward_flops(self) -> int:
        return sum(self.flops)

    @property
    def train_gflops(self) -> float:
        """Training FLOPs per image (forward + backward = 3 x forward), in GFLOP."""
        return TRAIN_FLOPS_PER_FORWARD * self.forward_flops / 1e9

    @property
    def params_feasible(self) -> bool:
        return self.total <= self.budget

    @property
    def flops_feasible(self) -> bool:
        return self.max_gflops is None or self.train_gflops <= self.max_gflops

    @property
    def feasible(self) -> bool:
        return self.params_feasible and self.flops_feasible

    def largest(self, k=3):
        return sorted(self.rows, key=lambda row: -row[1])[:k]

    def largest_flops(self, k=3):
        """(name, training GFLOP per image) of the k most expensive rows."""
        named = [(name, TRAIN_FLOPS_PER_FORWARD * flops / 1e9) for (name, _), flops in zip(self.rows, self.flops)]
        return sorted(named, key=lambda row: -row[1])[:k]

    def table(self) -> str:
        width = max(len(name) for name, _ in self.rows)
        gflops = [TRAIN_FLOPS_PER_FORWARD * f / 1e9 for f in self.flops] or [0.0] * len(self.rows)
        total_gflops = max(sum(gflops), 1e-12)
        lines = [f"{'module':<{width}}  {'params':>10}  {'share':>6}  {'GFLOP':>8}  {'share':>6}"]
        for (name, count), g in zip(self.rows, gflops):
            lines.append(f"{name:<{width}}  {count:>10,}  {100 * count / max(self.total, 1):5.1f}%  "
                         f"{g:>8.3f}  {100 * g / total_gflops:5.1f}%")
        lines.append(f"{'total':<{width}}  {self.total:>10,}  {'':>6}  {sum(gflops):>8.3f}")
        lines.append("GFLOP: training FLOPs per image, 3 x forward (conv and linear multiply-adds x 2)")
        return "\n".join(lines)

    def summary_line(self) -> str:
        flops = ("" if self.max_gflops is None
                 else f"train_gflops={self.train_gflops:.3f} max_gflops={self.max_gflops:g} ")
        return f"{flops}params={self.total} budget={self.budget} feasible={str(self.feasible).lower()}"

    def over_budget_message(self) -> str:
        parts = []
        if not self.params_feasible:
            biggest = ", ".join(f"{name} {count:,}" for name, count in self.largest())
            parts.append(f"model has {self.total:,} parameters, over the budget of {self.budget:,} by "
                         f"{self.total - self.budget:,} (largest: {biggest}). Shrink those layers "
                         f"(fewer blocks or channels) or raise budget.max_params.")
        if not self.flops_feasible:
            biggest = ", ".join(f"{name} {g:.3f}" for name, g in self.largest_flops())
            parts.append(f"model needs {self.train_gflops:.3f} training GFLOP per image, over the FLOPs "
                         f"budget (budget.max_gflops={self.max_gflops:g}) by {self.train_gflops - self.max_gflops:.3f} "
                         f"(largest: {biggest}). Shrink those layers (fewer blocks or channels), downsample "
                         f"earlier (a strided stem such as stem=conv5x5) or raise budget.max_gflops.")
        message = " ".join(parts)
        return f"{message} {self.note}" if self.note else message


def count(spec: ModelSpec, budget, max_gflops=None, note="") -> ParamReport:
    """Parameters and forward FLOPs per row (stem, each layer, head), checking every block's shapes."""
    stem = ops.trace(stem_ops(spec), spec.image_size)
    rows, flops, size, c_in = [("stem", stem.params)], [stem.flops], stem.size, spec.stem.channels
    came_from = f"stem '{spec.stem.name}' and the layers before it"
    for layer, blocks in layout(spec):
        params = layer_flops = 0
        previous = cost = None
        for index, (cls, block) in enumerate(blocks):
            if (block, size) != previous:  # later blocks of a layer repeat the same spec on the same size
                previous = (block, size)
                cost = cls.cost(block, size, f"model.layers.{layer.name} block {index}", came_from)
            params, layer_flops, size = params + cost.params, layer_flops + cost.flops, cost.size
        rows.append((f"{layer.name} ({len(blocks)} blocks)", params))
        flops.append(layer_flops)
        c_in = layer.channels
    head = ops.trace(head_ops(spec, c_in), size)
    rows.append(("head", head.params))
    flops.append(head.flops)
    return ParamReport(rows, sum(n for _, n in rows), int(budget), note, flops, max_gflops)
