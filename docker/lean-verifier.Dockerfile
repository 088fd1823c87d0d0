# Lean verify worker: elan + one pinned Lean/Mathlib/REPL tag, bubblewrap, non-root.
# Build: docker build -f docker/lean-verifier.Dockerfile --build-arg LEAN_TAG=v4.24.0 -t prover-lean-verify .
FROM debian:12-slim
ARG LEAN_TAG=v4.24.0
ARG MATHLIB_TAG=v4.24.0
ARG REPL_TAG=v4.24.0
RUN apt-get update && apt-get install -y --no-install-recommends \
      ca-certificates curl git bubblewrap python3 python3-venv python3-pip build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 prover
USER prover
WORKDIR /home/prover
ENV PATH=/home/prover/.elan/bin:$PATH
RUN curl -sSfL https://raw.githubusercontent.com/leanprover/elan/master/elan-init.sh \
      | sh -s -- -y --default-toolchain leanprover/lean4:${LEAN_TAG}
# Mathlib and the REPL at the same tag as the toolchain; the cache download avoids a local build.
RUN git clone --depth 1 --branch ${MATHLIB_TAG} https://github.com/leanprover-community/mathlib4.git mathlib \
    && cd mathlib && lake exe cache get && lake build Mathlib
RUN git clone --depth 1 --branch ${REPL_TAG} https://github.com/leanprover-community/repl.git repl \
    && cd repl && lake build
COPY --chown=prover:prover . /home/prover/app
RUN python3 -m venv /home/prover/venv \
    && /home/prover/venv/bin/pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && /home/prover/venv/bin/pip install --no-cache-dir -e /home/prover/app
ENV PROVER_LEAN_PROJECT=/home/prover/mathlib \
    PROVER_LEAN_REPL=/home/prover/repl/.lake/build/bin/repl \
    PATH=/home/prover/venv/bin:/home/prover/.elan/bin:$PATH
CMD ["prover", "worker", "--queues", "verify", "--concurrency", "4"]
