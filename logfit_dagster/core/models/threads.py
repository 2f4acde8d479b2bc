"""How many threads torch may use in this process.

torch's default is one thread per core, whatever else runs: with other work on a 2-core
machine a training step took 1.84 s against 0.12 s on one thread. So every process that trains
or scores a torch model sets its threads from the CPUs it may use and the steps running beside
it, unless told (on a machine shared with other work, ``LOGFIT_TORCH_THREADS=1``):

- ``LOGFIT_TORCH_THREADS``: the number of threads (an explicit choice wins);
- ``LOGFIT_STEPS_BESIDE``: how many steps share this machine's CPUs (the multiprocess
  executor's ``max_concurrent``; default 1, as in ``logfit materialize``).
"""

from __future__ import annotations

import os

_configured: dict[str, int] = {}


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def torch_threads(environ: dict | None = None) -> tuple[int, str]:
    """The intra-op threads to use, and why.

    Raises:
        ValueError: naming the variable when ``LOGFIT_TORCH_THREADS`` or
            ``LOGFIT_STEPS_BESIDE`` is not a whole number of at least 1.
    """
    env = os.environ if environ is None else environ
    explicit = _positive(env, "LOGFIT_TORCH_THREADS")
    if explicit:
        return explicit, "LOGFIT_TORCH_THREADS"
    cpus = available_cpus()
    beside = _positive(env, "LOGFIT_STEPS_BESIDE") or 1
    # Not the machine's momentary load: a thread count changes the order of torch's sums, and
    # a model trained (or resumed) under load would then differ from one trained without.
    threads = max(1, cpus // beside)
    return threads, f"{cpus} CPU(s) for this process, {beside} step(s) beside"


def configure_torch_threads(environ: dict | None = None) -> int:
    """Set torch's intra-op threads (and one inter-op thread) for this process; returns the
    intra-op count. Safe to call again: the inter-op count can only be set once."""
    import torch

    threads, why = torch_threads(environ)
    torch.set_num_threads(threads)
    if "interop" not in _configured:
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # parallel work already started in this process: keep it
            pass
        _configured["interop"] = 1
    _configured["threads"] = threads
    _configured["why"] = why  # type: ignore[assignment]
    return threads


def _positive(env, name: str) -> int | None:
    value = (env.get(name) or "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name}={value!r}: expected a whole number of threads, at least 1")
    return int(value)
