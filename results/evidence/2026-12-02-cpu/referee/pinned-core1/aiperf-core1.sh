#!/bin/sh
# AIPerf on core 1 only: the core vLLM-CPU leaves to its front end (its worker is bound to core 0)
exec taskset -c 1 /work/wt/referee/.venv-referee/bin/aiperf "$@"
