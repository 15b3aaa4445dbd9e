"""Named vmap axes the engine binds, so a model can ask how many problems share one call.

`jaxem.restarts` vmaps a fit over its restarts with axis name RESTARTS. Inside, an E-step
sees one restart's arrays, yet XLA runs all of them as one batched program; a kernel whose
best formulation depends on the total batch (hmm_inference's transition products) reads
it with `restarts_in_flight()`. Only static sizes are read, nothing is communicated.
"""

from __future__ import annotations

from jax import lax

RESTARTS = "restarts"


def restarts_in_flight() -> int:
    """Static number of restarts vmapped together around the caller; 1 outside a fit's
    restart vmap (eager calls, a user's own vmap)."""
    try:
        return int(lax.axis_size(RESTARTS))
    except NameError:
        return 1
