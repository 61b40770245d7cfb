# voxagent image for docker-compose.yml (api, agent and vision workers share it).
# TORCH selects the build: the CPU wheel by default (no CUDA libraries, no NVIDIA packages), the GPU
# build only on request, e.g. for the vision worker of a GPU host:
#   docker build --build-arg TORCH=cuda [--build-arg TORCH_CUDA=cu128] .
# (TORCH=cuda VOXAGENT_BUILD_TORCH=cuda docker compose build: see docker-compose.yml)
FROM python:3.11-slim
ARG TORCH=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu128
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# PyTorch's own index, named with the build's local version (+cpu / +cu128), so pip cannot settle on
# PyPI's default wheel, which is the CUDA build on Linux.
RUN case "$TORCH" in \
      cpu) flavour=cpu ;; \
      cuda) flavour="$TORCH_CUDA" ;; \
      *) echo "TORCH must be cpu or cuda, got $TORCH" >&2; exit 2 ;; \
    esac \
    && pip install --no-cache-dir "torch==${TORCH_VERSION}+${flavour}" \
       --extra-index-url "https://download.pytorch.org/whl/${flavour}"
COPY pyproject.toml README.md ./
COPY api_schemas api_schemas
COPY voxel_ops voxel_ops
COPY vision vision
COPY agent agent
# no training/: a serving image carries no trainer (`voxagent train/eval` say so and exit 2)
COPY service service
COPY cli cli
COPY models models
RUN pip install --no-cache-dir .
# the web page's viewer (NiiVue) from npm, by the lock file; served from here (not copied into the repo)
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm \
    && cd service/web && npm ci --no-audit --no-fund --loglevel=error \
    && apt-get purge -y -qq npm nodejs && apt-get autoremove -y -qq && rm -rf /var/lib/apt/lists/*
ENV VOXAGENT_WEB_NODE_MODULES=/app/service/web/node_modules
RUN useradd --create-home voxagent && mkdir -p /data && chown voxagent /data
USER voxagent
EXPOSE 8000
CMD ["voxagent", "serve", "--host", "0.0.0.0", "--port", "8000"]
