# gpulin on CUDA 12: `docker build -t gpulin . && docker run --gpus all gpulin`
FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /opt/gpulin
COPY pyproject.toml README.md ./
COPY gpulin ./gpulin
RUN pip install --no-cache-dir ".[cuda12]" matplotlib
CMD ["gpulin", "demo", "--device", "cuda"]
