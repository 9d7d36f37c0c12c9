"""mimo_lab: look inside reasoning language models, MiMo first.

    import mimo_lab
    lab = mimo_lab.load()                 # MiMo-nano, on the CPU, offline
    trace = lab.generate("What is 128 + 367?")
    trace.final_answer                    # '495'
"""

from mimo_lab.models.mimo import MiMoConfig, MiMoForCausalLM, MiMoModel
from mimo_lab.models.mimo import register as _register

_register()

from mimo_lab.lab import Lab, load  # noqa: E402  (registration first)
from mimo_lab.trace import Trace  # noqa: E402

__all__ = ["load", "Lab", "Trace", "MiMoConfig", "MiMoModel", "MiMoForCausalLM"]
__version__ = "0.1.0"
