"""llmirc: an ahead-of-time compiler for LLM inference on IREE.

    llmirc compile CHECKPOINT_DIR --target cpu -O2 -o OUT/
    llmirc run OUT/ --prompt "..."

`llmirc.load(OUT)` gives the same runtime from Python. Importing this package
is cheap: the compiler and runtime load on first use.
"""

__version__ = "0.1.0"


def load(artifact_dir, **kwargs):
    """Load a compiled artifact for generation (see llmirc.api.load)."""
    from .api import load as _load

    return _load(artifact_dir, **kwargs)
