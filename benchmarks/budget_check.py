"""Budget-check latency: what one proposal pays to be counted against the budget (the config's one check at
entry, training.schema.validate, then param_report), the count alone on the checked config, and the memory it
takes (none for weights)."""
import resource
import statistics
import time
import tracemalloc

from models import build_model, param_report
from training.schema import validate

CONFIGS = {  # name: Hydra overrides
    "final": ["model=final"],
    "50M": ["model=final", "model.width_mult=3.2", "budget.max_params=60_000_000"],
}


def max_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def bench(compose, repeats=20, control=True):
    """Latency (first call, median, max) of validate + param_report on the composed config, the median of
    param_report alone on the checked config (count_ms), and memory, per config.

    Peak RSS growth catches tensor memory (weights would be 4 bytes per parameter); tracemalloc, in a
    pass of its own, catches Python objects. With control=True the same config is also built for real, which shows
    the RSS growth that weight memory would have caused.
    """
    rows = []
    for name, overrides in CONFIGS.items():
        cfg = compose(overrides)
        rss_before = max_rss_mb()
        times, counts = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            checked = validate(cfg)
            middle = time.perf_counter()
            report = param_report(checked)
            times.append((time.perf_counter() - start) * 1000)
            counts.append((time.perf_counter() - middle) * 1000)
        # Memory in a pass of its own: tracemalloc hooks every allocation, and OmegaConf's merge in validate
        # allocates a lot (timed under it, validate + param_report took 80 ms instead of 17 ms here).
        tracemalloc.start()
        param_report(validate(cfg))
        _, python_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        row = {"config": name, "params": report.total, "first_ms": round(times[0], 2),
               "median_ms": round(statistics.median(times), 2), "max_ms": round(max(times), 2),
               "count_ms": round(statistics.median(counts), 2),
               "python_peak_kb": round(python_peak / 1024, 1), "rss_growth_mb": round(max_rss_mb() - rss_before, 1),
               "weights_would_be_mb": round(report.total * 4 / 2**20, 1)}
        if control:
            before = max_rss_mb()
            model = build_model(cfg, device="cpu")
            row["real_build_rss_growth_mb"] = round(max_rss_mb() - before, 1)
            del model
        rows.append(row)
    return rows
