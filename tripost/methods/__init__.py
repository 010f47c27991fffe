"""Self-improvement methods. Each is one module of plain functions with the same names (the
contract is in docs/methods.md); `get_method(name)` picks the module by a plain if/elif.

    tripost     TriPosT (Yu et al., NAACL 2024): the model critiques and rewrites its own answers;
                an expert edits them into improvement trajectories
    multiagent  multi-agent finetuning (Subramaniam et al., 2025): generator and critic agents
                debate, each trains on its own answers that agree with the consensus
    saie        SAIE (Loem et al., 2023): a learner trained through discussions with a fixed partner
                whose remarks are supportive (wrong answers) or adversarial (right ones)
"""

from __future__ import annotations

from types import ModuleType

from tripost.config import METHOD_NAMES
from tripost.errors import TripostError


def get_method(name: str) -> ModuleType:
    # Plain imports, no registry: a new method is a new module and one line here.
    if name == "tripost":
        from tripost.methods import tripost as method
    elif name == "multiagent":
        from tripost.methods import multiagent as method
    elif name == "saie":
        from tripost.methods import saie as method
    else:
        raise TripostError(f"config: unknown method {name!r} (choose from {', '.join(METHOD_NAMES)})")
    return method
