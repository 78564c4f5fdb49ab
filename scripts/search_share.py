"""How much of a search preset fits the budget: draw random proposals, count each (no model, no training).

    python scripts/search_share.py family model=family                 # 2,000 proposals of search=family
    python scripts/search_share.py family model=family budget.max_gflops=2 -n 500 --seed 1

Each proposal draws every parameter of conf/hydra/sweeper/search/<preset>.yaml uniformly (what Optuna's
RandomSampler, and TPE before it has learnt anything, does) and goes through the gate's own check
(training.gate.check_config: the schema, the shapes, the parameter count and, when budget.max_gflops is
set, the FLOPs). Config groups among the parameters (stem) are composed once per option; plain values
are set on a copy. Prints the share within budget, the share refused otherwise, and the spread of
parameters and training GFLOP per image of the proposals that fit.
"""
import argparse
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from errors import UserError  # noqa: E402
from training.gate import check_config  # noqa: E402


def load_space(preset):
    """{key: ("values", [...]) | ("interval", (low, high))} from the preset's sweep grammar."""
    path = ROOT / "conf" / "hydra" / "sweeper" / "search" / f"{preset}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise SystemExit(f"error: no search preset {preset!r}: use one of {names}")
    params = OmegaConf.to_container(OmegaConf.load(path))
    lines = [f"{key}={value}" for key, value in params.items()]
    space = {}
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.get_key_element()
        if override.is_interval_sweep():
            value = override.value()
            space[key] = ("interval", (float(value.start), float(value.end)))
        elif override.is_sweep_override():
            space[key] = ("values", list(override.sweep_iterator()))
        else:
            space[key] = ("values", [override.value()])
    return space


def draw(space, rng):
    return {key: rng.choice(values) if kind == "values" else rng.uniform(*values)
            for key, (kind, values) in space.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", help="a file of conf/hydra/sweeper/search/ (without .yaml)")
    parser.add_argument("overrides", nargs="*", help="the job's fixed overrides (model=family, budget.max_gflops=2)")
    parser.add_argument("-n", type=int, default=2000, help="proposals to draw (default 2,000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    space = load_space(args.preset)
    groups = [key for key in space if (ROOT / "conf" / key).is_dir()]
    rng = random.Random(args.seed)
    composed = {}
    fits, over, invalid, params, gflops, reasons = 0, 0, 0, [], [], {}
    with initialize_config_dir(config_dir=str(ROOT / "conf")):
        for _ in range(args.n):
            proposal = draw(space, rng)
            choice = tuple(f"{key}={proposal[key]}" for key in groups)
            if choice not in composed:
                composed[choice] = compose("config", overrides=[*args.overrides, *choice])
            cfg = composed[choice].copy()
            for key, value in proposal.items():
                if key not in groups:
                    OmegaConf.update(cfg, key, value, merge=False)
            try:
                report = check_config(cfg)
            except UserError as err:
                invalid += 1
                reasons[str(err).split(":")[0]] = reasons.get(str(err).split(":")[0], 0) + 1
                continue
            within = report.feasible and (report.max_gflops is None or report.train_gflops <= report.max_gflops)
            if within:
                fits += 1
                params.append(report.total)
                gflops.append(report.train_gflops)
            else:
                over += 1
    n = args.n
    print(f"search={args.preset} {' '.join(args.overrides)}: {n:,} random proposals (seed {args.seed})")
    print(f"within budget: {fits:,} ({100 * fits / n:.1f}%) | over budget: {over:,} ({100 * over / n:.1f}%) | "
          f"invalid: {invalid:,} ({100 * invalid / n:.1f}%)")
    for reason, count in sorted(reasons.items(), key=lambda item: -item[1])[:5]:
        print(f"  invalid: {count:,} x {reason}")
    if params:
        quartiles = [int(q) for q in statistics.quantiles(params, n=4)]
        print(f"parameters of those within: min {min(params):,}, quartiles {quartiles[0]:,} / {quartiles[1]:,} / "
              f"{quartiles[2]:,}, max {max(params):,}")
        g = statistics.quantiles(gflops, n=4)
        print(f"training GFLOP per image of those within: min {min(gflops):.3f}, quartiles {g[0]:.3f} / {g[1]:.3f} / "
              f"{g[2]:.3f}, max {max(gflops):.3f}")
    print(f"share_within_budget={fits / n:.3f}")
    return {"within": fits / n, "over": over / n, "invalid": invalid / n}


if __name__ == "__main__":
    main()
