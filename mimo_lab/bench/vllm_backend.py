"""vLLM generation for benchmark runs (extra `vllm`; GPU only). Imported only when asked for."""

from __future__ import annotations


def require_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError as err:
        raise ImportError("the vllm backend needs vLLM: `pip install 'mimo_lab[vllm]'` on a machine with a CUDA "
                          "GPU (or use backend='transformers')") from err
    import vllm

    return vllm


def vllm_generator(lab):
    require_vllm()
    raise NotImplementedError("the vLLM backend arrives with the scale issue")
