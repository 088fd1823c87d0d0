# GPU worker: vLLM + torch (CUDA) + the project; serves the generate and train queues.
# Build: docker build -f docker/gpu.Dockerfile -t prover-gpu .
FROM vllm/vllm-openai:v0.11.0
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir -e '/app[gpu]'
ENTRYPOINT []
CMD ["prover", "worker", "--queues", "generate,train", "--concurrency", "1"]
